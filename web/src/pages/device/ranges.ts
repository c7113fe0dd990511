export interface RangePreset {
  id: string;
  label: string;
  seconds: number;
}

export const PRESETS: RangePreset[] = [
  { id: '15m', label: '15 min', seconds: 15 * 60 },
  { id: '1h', label: '1 hour', seconds: 3600 },
  { id: '6h', label: '6 hours', seconds: 6 * 3600 },
  { id: '24h', label: '24 hours', seconds: 86400 },
  { id: '7d', label: '7 days', seconds: 7 * 86400 },
  { id: '30d', label: '30 days', seconds: 30 * 86400 },
  { id: '90d', label: '90 days', seconds: 90 * 86400 },
  { id: '365d', label: '1 year', seconds: 365 * 86400 },
];

export type Range =
  { kind: 'preset'; preset: RangePreset } | { kind: 'custom'; from: Date; to: Date };

/** The API's `from`/`to` for a range: relative (`-24h`, `now`) or ISO-8601 UTC. */
export function rangeQuery(range: Range): { from: string; to: string } {
  if (range.kind === 'preset') return { from: `-${range.preset.id}`, to: 'now' };
  return { from: range.from.toISOString(), to: range.to.toISOString() };
}

/** `<input type="datetime-local">` value of a date (local time). */
export function toLocalInput(date: Date): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}
