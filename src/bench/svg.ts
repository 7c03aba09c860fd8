import type { Series } from './stats.js';

/**
 * A strip chart of latency distributions: one row per series, every sample a dot on a log
 * scale, p50 and p95 marked. Hand-written SVG: no charting dependency for one picture.
 */
export function latencySvg(title: string, rows: Series[]): string {
  const width = 900;
  const rowHeight = 46;
  const left = 230;
  const right = 40;
  const top = 50;
  const height = top + rows.length * rowHeight + 50;
  const all = rows.flatMap((r) => r.samples).filter((v) => v > 0);
  const lo = Math.log10(Math.max(1, Math.min(...all) * 0.8));
  const hi = Math.log10(Math.max(...all) * 1.2);
  const x = (v: number) => left + ((Math.log10(Math.max(v, 1)) - lo) / (hi - lo || 1)) * (width - left - right);
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="15">${esc(title)}</text>`,
  ];
  for (let decade = Math.ceil(lo); decade <= Math.floor(hi); decade++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** decade;
      if (Math.log10(v) < lo || Math.log10(v) > hi) continue;
      const label = v >= 1000 ? `${v / 1000} s` : `${v} ms`;
      parts.push(`<line x1="${x(v)}" y1="${top - 10}" x2="${x(v)}" y2="${height - 40}" stroke="#ddd"/>`,
        `<text x="${x(v)}" y="${height - 24}" text-anchor="middle" fill="#555">${label}</text>`);
    }
  }
  rows.forEach((row, i) => {
    const y = top + i * rowHeight + rowHeight / 2;
    parts.push(`<text x="${left - 10}" y="${y + 4}" text-anchor="end">${esc(row.name)} (n=${row.samples.length})</text>`);
    row.samples.forEach((v, j) => {
      const jitter = ((j * 7919) % 13) - 6;
      parts.push(`<circle cx="${x(v).toFixed(1)}" cy="${y + jitter}" r="2.5" fill="#3b6ea8" fill-opacity="0.6"/>`);
    });
    for (const [p, color] of [[row.p50, '#d62728'], [row.p95, '#ff7f0e']] as const) {
      parts.push(`<line x1="${x(p)}" y1="${y - 14}" x2="${x(p)}" y2="${y + 14}" stroke="${color}" stroke-width="2"/>`);
    }
  });
  parts.push(`<text x="${left}" y="${height - 6}" fill="#555">red: p50, orange: p95, log scale</text>`, '</svg>');
  return parts.join('\n');
}
