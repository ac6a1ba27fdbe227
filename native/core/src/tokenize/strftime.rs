//! `strftime_now(format)` for chat templates: transformers calls
//! `datetime.now().strftime(format)`, i.e. the server's *local* time, naive, as
//! glibc's strftime (plus Python's own `%f`) formats it in the C locale. We format
//! an injected clock (ms since the epoch) in UTC: vLLM images run in UTC unless
//! TZ is set, and the clock is injected so that renders are reproducible.
//!
//! Supported: `%a %A %b %h %B %c %C %d %D %e %f %F %g %G %H %I %j %k %l %m %M %n
//! %p %P %r %R %s %S %t %T %u %U %V %w %W %x %X %y %Y %z %Z %%` with glibc's flags
//! `-` (no padding), `_` (space padding), `0` (zero padding), `^` (upper case) and
//! an optional width. `%z`/`%Z` print nothing (a naive datetime has no zone). An
//! unknown conversion is copied through unchanged, as glibc does.

use std::fmt::Write;

const DAYS: [&str; 7] =
    ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tm {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub micros: u32,
    /// 0 = Sunday
    pub weekday: u32,
    /// 0-based day of the year
    pub yday: u32,
    /// seconds since the epoch
    pub epoch_secs: i64,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Tm {
    /// UTC time of `ms` milliseconds since the epoch.
    pub fn from_unix_ms(ms: i64) -> Tm {
        let secs = ms.div_euclid(1000);
        let millis = ms.rem_euclid(1000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUM[month as usize - 1] + day - 1 + u32::from(month > 2 && is_leap(year));
        Tm {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
            micros: millis * 1000,
            weekday: (days + 4).rem_euclid(7) as u32,
            yday,
            epoch_secs: secs,
        }
    }

    /// ISO 8601 week-based year and week number.
    fn iso_week(&self) -> (i64, u32) {
        // p(y) = weekday of Dec 31 of y (0 = Sunday); 53 weeks iff p(y) == 4 or p(y - 1) == 3
        let p =
            |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
        let weeks_in = |y: i64| if p(y) == 4 || p(y - 1) == 3 { 53 } else { 52 };
        let wday = (self.weekday as i64 + 6) % 7 + 1; // Monday = 1 .. Sunday = 7
        let week = (self.yday as i64 + 1 - wday + 10) / 7;
        if week < 1 {
            (self.year - 1, weeks_in(self.year - 1) as u32)
        } else if week > weeks_in(self.year) {
            (self.year + 1, 1)
        } else {
            (self.year, week as u32)
        }
    }
}

enum Pad {
    Zero,
    Space,
    None,
}

fn num(out: &mut String, v: i64, width: usize, default_pad: Pad, flag: Option<char>) {
    let pad = match flag {
        Some('-') => Pad::None,
        Some('_') => Pad::Space,
        Some('0') => Pad::Zero,
        _ => default_pad,
    };
    let _ = match pad {
        Pad::Zero => write!(out, "{v:0width$}"),
        Pad::Space => write!(out, "{v:width$}"),
        Pad::None => write!(out, "{v}"),
    };
}

/// Formats `tm` like C/Python `strftime(fmt)` (see the module docs).
pub fn strftime(fmt: &str, tm: &Tm) -> String {
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let start = out.len();
        let mut spec = String::from("%");
        let mut flag = None;
        while let Some(&f) = chars.peek() {
            if matches!(f, '-' | '_' | '0' | '^' | '#') {
                spec.push(f);
                if f != '^' && f != '#' {
                    flag = Some(f);
                }
                chars.next();
            } else {
                break;
            }
        }
        let upper = spec.contains('^');
        let mut width: Option<usize> = None;
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            spec.push(d);
            width = Some(width.unwrap_or(0) * 10 + d as usize - '0' as usize);
            chars.next();
        }
        let Some(conv) = chars.next() else {
            out.push_str(&spec);
            break;
        };
        let w = |default: usize| width.unwrap_or(default);
        let hour12 = if tm.hour.is_multiple_of(12) { 12 } else { tm.hour % 12 } as i64;
        match conv {
            'a' => out.push_str(&DAYS[tm.weekday as usize][..3]),
            'A' => out.push_str(DAYS[tm.weekday as usize]),
            'b' | 'h' => out.push_str(&MONTHS[tm.month as usize - 1][..3]),
            'B' => out.push_str(MONTHS[tm.month as usize - 1]),
            'c' => out.push_str(&strftime("%a %b %e %H:%M:%S %Y", tm)),
            'C' => num(&mut out, tm.year.div_euclid(100), w(2), Pad::Zero, flag),
            'd' => num(&mut out, tm.day as i64, w(2), Pad::Zero, flag),
            'D' | 'x' => out.push_str(&strftime("%m/%d/%y", tm)),
            'e' => num(&mut out, tm.day as i64, w(2), Pad::Space, flag),
            'f' => num(&mut out, tm.micros as i64, 6, Pad::Zero, None),
            'F' => out.push_str(&strftime("%Y-%m-%d", tm)),
            'g' => num(&mut out, tm.iso_week().0.rem_euclid(100), w(2), Pad::Zero, flag),
            'G' => num(&mut out, tm.iso_week().0, w(1), Pad::Zero, flag),
            'H' => num(&mut out, tm.hour as i64, w(2), Pad::Zero, flag),
            'I' => num(&mut out, hour12, w(2), Pad::Zero, flag),
            'j' => num(&mut out, tm.yday as i64 + 1, w(3), Pad::Zero, flag),
            'k' => num(&mut out, tm.hour as i64, w(2), Pad::Space, flag),
            'l' => num(&mut out, hour12, w(2), Pad::Space, flag),
            'm' => num(&mut out, tm.month as i64, w(2), Pad::Zero, flag),
            'M' => num(&mut out, tm.minute as i64, w(2), Pad::Zero, flag),
            'n' => out.push('\n'),
            'p' => out.push_str(if tm.hour < 12 { "AM" } else { "PM" }),
            'P' => out.push_str(if tm.hour < 12 { "am" } else { "pm" }),
            'r' => out.push_str(&strftime("%I:%M:%S %p", tm)),
            'R' => out.push_str(&strftime("%H:%M", tm)),
            's' => num(&mut out, tm.epoch_secs, w(1), Pad::Zero, flag),
            'S' => num(&mut out, tm.second as i64, w(2), Pad::Zero, flag),
            't' => out.push('\t'),
            'T' | 'X' => out.push_str(&strftime("%H:%M:%S", tm)),
            'u' => num(
                &mut out,
                if tm.weekday == 0 { 7 } else { tm.weekday as i64 },
                w(1),
                Pad::Zero,
                flag,
            ),
            'U' => {
                num(&mut out, (tm.yday as i64 + 7 - tm.weekday as i64) / 7, w(2), Pad::Zero, flag)
            }
            'V' => num(&mut out, tm.iso_week().1 as i64, w(2), Pad::Zero, flag),
            'w' => num(&mut out, tm.weekday as i64, w(1), Pad::Zero, flag),
            'W' => num(
                &mut out,
                (tm.yday as i64 + 7 - (tm.weekday as i64 + 6) % 7) / 7,
                w(2),
                Pad::Zero,
                flag,
            ),
            'y' => num(&mut out, tm.year.rem_euclid(100), w(2), Pad::Zero, flag),
            'Y' => num(&mut out, tm.year, w(1), Pad::Zero, flag),
            'z' | 'Z' => {}
            '%' => out.push('%'),
            other => {
                out.push_str(&spec);
                out.push(other);
                continue;
            }
        }
        if upper {
            let tail = out[start..].to_uppercase();
            out.truncate(start);
            out.push_str(&tail);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25T12:00:00Z, the goldens' frozen clock.
    const CLOCK_MS: i64 = 1_795_608_000_000;

    #[test]
    fn broken_down_time() {
        let tm = Tm::from_unix_ms(CLOCK_MS);
        assert_eq!(
            (tm.year, tm.month, tm.day, tm.hour, tm.minute, tm.second),
            (2026, 11, 25, 12, 0, 0)
        );
        assert_eq!(tm.weekday, 3); // Wednesday
        assert_eq!(tm.yday + 1, 329);
        let epoch = Tm::from_unix_ms(0);
        assert_eq!((epoch.year, epoch.month, epoch.day, epoch.weekday), (1970, 1, 1, 4));
        let before = Tm::from_unix_ms(-1);
        assert_eq!(
            (before.year, before.month, before.day, before.hour, before.second),
            (1969, 12, 31, 23, 59)
        );
        assert_eq!(before.micros, 999_000);
        let leap = Tm::from_unix_ms(951_782_400_000); // 2000-02-29
        assert_eq!((leap.month, leap.day, leap.yday + 1), (2, 29, 60));
    }

    #[test]
    fn formats_match_python() {
        // datetime(2026, 11, 25, 12, 0, 0).strftime(fmt)
        let tm = Tm::from_unix_ms(CLOCK_MS);
        let cases = [
            ("%d %b %Y", "25 Nov 2026"),
            ("%Y-%m-%dT%H:%M:%S", "2026-11-25T12:00:00"),
            ("%B %d, %Y", "November 25, 2026"),
            ("%A %a %y %j", "Wednesday Wed 26 329"),
            ("%I:%M %p", "12:00 PM"),
            ("%-d/%-m %e|%f|%z|%Z|%%", "25/11 25|000000|||%"),
            ("%c", "Wed Nov 25 12:00:00 2026"),
            ("%u %w %U %W %V %G", "3 3 47 47 48 2026"),
            ("%^a %Q", "WED %Q"),
        ];
        for (fmt, want) in cases {
            assert_eq!(strftime(fmt, &tm), want, "{fmt}");
        }
        // 2027-01-01 is a Friday: ISO week 53 of 2026.
        let ny = Tm::from_unix_ms(1_798_761_600_000);
        assert_eq!(strftime("%F %V %G %U %W %j", &ny), "2027-01-01 53 2026 00 00 001");
        let early = Tm::from_unix_ms(3_723_000); // 01:02:03
        assert_eq!(strftime("%H %k %l %I %p %P", &early), "01  1  1 01 AM am");
    }
}
