/** Reading Prometheus text exposition in tests. */

/** The value of the sample `name{labels}` (labels in rendered order), or undefined. */
export function sample(text: string, series: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}
