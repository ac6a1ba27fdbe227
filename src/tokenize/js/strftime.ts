/**
 * Python's `datetime.now().strftime(fmt)` as transformers' `strftime_now` calls it: a naive
 * datetime (here: UTC), the C locale, glibc's directives and flags (`%-d`, `%_H`, `%^a`, a width),
 * `%f` from Python, and `%z` / `%Z` empty because the datetime is naive.
 */

const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MONTHS = [
  'January',
  'February',
  'March',
  'April',
  'May',
  'June',
  'July',
  'August',
  'September',
  'October',
  'November',
  'December',
];

const DIRECTIVE = /%([-_0^#]*)([0-9]*)(?:E|O)?([a-zA-Z%+])/g;

function dayOfYear(d: Date): number {
  return (
    Math.floor(
      (Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()) -
        Date.UTC(d.getUTCFullYear(), 0, 1)) /
        86_400_000,
    ) + 1
  );
}

/** ISO 8601 week-numbering year and week. */
function isoWeek(d: Date): [number, number] {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dow = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - dow);
  const year = t.getUTCFullYear();
  const week = Math.ceil(((t.getTime() - Date.UTC(year, 0, 1)) / 86_400_000 + 1) / 7);
  return [year, week];
}

/** Formats `nowMs` (ms since the epoch, read as UTC) like Python's strftime. */
export function pyStrftime(format: string, nowMs: number): string {
  const d = new Date(nowMs);
  const Y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  const day = d.getUTCDate();
  const H = d.getUTCHours();
  const M = d.getUTCMinutes();
  const S = d.getUTCSeconds();
  const w = d.getUTCDay();
  const j = dayOfYear(d);
  const I = H % 12 === 0 ? 12 : H % 12;

  // [value, default pad char, default width] for numbers; strings for text.
  const num = (v: number, width: number, pad: '0' | ' ' = '0') => ({ v, width, pad });
  type Num = ReturnType<typeof num>;
  const expand = (c: string): string | Num | undefined => {
    switch (c) {
      case 'a':
        return (DAYS[w] as string).slice(0, 3);
      case 'A':
        return DAYS[w] as string;
      case 'b':
      case 'h':
        return (MONTHS[m] as string).slice(0, 3);
      case 'B':
        return MONTHS[m] as string;
      case 'c':
        return pyStrftime('%a %b %e %H:%M:%S %Y', nowMs);
      case 'C':
        return num(Math.floor(Y / 100), 2);
      case 'd':
        return num(day, 2);
      case 'D':
        return pyStrftime('%m/%d/%y', nowMs);
      case 'e':
        return num(day, 2, ' ');
      case 'f':
        return num((nowMs % 1000) * 1000, 6);
      case 'F':
        return pyStrftime('%Y-%m-%d', nowMs);
      case 'G':
        return num(isoWeek(d)[0], 1);
      case 'g':
        return num(isoWeek(d)[0] % 100, 2);
      case 'H':
        return num(H, 2);
      case 'I':
        return num(I, 2);
      case 'j':
        return num(j, 3);
      case 'k':
        return num(H, 2, ' ');
      case 'l':
        return num(I, 2, ' ');
      case 'm':
        return num(m + 1, 2);
      case 'M':
        return num(M, 2);
      case 'n':
        return '\n';
      case 'p':
        return H < 12 ? 'AM' : 'PM';
      case 'P':
        return H < 12 ? 'am' : 'pm';
      case 'r':
        return pyStrftime('%I:%M:%S %p', nowMs);
      case 'R':
        return pyStrftime('%H:%M', nowMs);
      case 's':
        return num(Math.floor(nowMs / 1000), 1);
      case 'S':
        return num(S, 2);
      case 't':
        return '\t';
      case 'T':
      case 'X':
        return pyStrftime('%H:%M:%S', nowMs);
      case 'u':
        return num(w === 0 ? 7 : w, 1);
      case 'U':
        return num(Math.floor((j + 6 - w) / 7), 2);
      case 'V':
        return num(isoWeek(d)[1], 2);
      case 'w':
        return num(w, 1);
      case 'W':
        return num(Math.floor((j + 6 - ((w + 6) % 7)) / 7), 2);
      case 'x':
        return pyStrftime('%m/%d/%y', nowMs);
      case 'y':
        return num(Y % 100, 2);
      case 'Y':
        return num(Y, 1);
      case 'z':
      case 'Z':
        return '';
      case '+':
        return pyStrftime('%a %b %e %H:%M:%S %Z %Y', nowMs);
      case '%':
        return '%';
      default:
        return undefined;
    }
  };

  return format.replace(DIRECTIVE, (whole, flags: string, widthText: string, c: string) => {
    const x = expand(c);
    if (x === undefined) return whole;
    const width = widthText === '' ? undefined : Number(widthText);
    if (typeof x === 'string') {
      let s = x;
      if (flags.includes('^')) s = s.toUpperCase();
      else if (flags.includes('#')) s = s === s.toUpperCase() ? s.toLowerCase() : s.toUpperCase();
      return width !== undefined && s.length < width ? s.padStart(width, ' ') : s;
    }
    const digits = String(x.v);
    if (flags.includes('-')) return digits;
    const pad = flags.includes('_') ? ' ' : flags.includes('0') ? '0' : x.pad;
    return digits.padStart(width ?? x.width, pad);
  });
}
