// A tiny inline-SVG line of hourly averages (GET /telemetry/sparklines): no chart library.
import { formatNumber } from '../lib/format';

export type SparkPoint = readonly [string, number];

/** SVG polyline coordinates for `points` ([ISO time, value], oldest first) in a
 *  `width` × `height` box: x by time (gaps stay gaps in time), y scaled to the values' range,
 *  higher values higher up; `pad` keeps the stroke inside the box. */
export function sparklinePoints(
  points: readonly SparkPoint[],
  width: number,
  height: number,
  pad = 1.5,
): string {
  const usable = points
    .map(([iso, value]) => [Date.parse(iso), value] as const)
    .filter(([t, v]) => Number.isFinite(t) && Number.isFinite(v));
  if (usable.length === 0) return '';
  const ts = usable.map(([t]) => t);
  const vs = usable.map(([, v]) => v);
  const [t0, t1] = [Math.min(...ts), Math.max(...ts)];
  const [lo, hi] = [Math.min(...vs), Math.max(...vs)];
  const x = (t: number) =>
    t1 === t0 ? width / 2 : pad + ((t - t0) / (t1 - t0)) * (width - 2 * pad);
  const y = (v: number) =>
    hi === lo ? height / 2 : pad + ((hi - v) / (hi - lo)) * (height - 2 * pad);
  const round = (n: number) => Math.round(n * 10) / 10;
  return usable.map(([t, v]) => `${round(x(t))},${round(y(v))}`).join(' ');
}

/** What the line shows, in words: the text alternative of the picture. */
export function sparklineSummary(
  metric: string,
  points: readonly SparkPoint[],
  hours = 24,
): string {
  const values = points.map(([, v]) => v).filter(Number.isFinite);
  if (values.length === 0) return `${metric}: no data in the last ${hours} h`;
  const last = values[values.length - 1];
  return (
    `${metric}, last ${hours} h: ${formatNumber(Math.min(...values))} to ` +
    `${formatNumber(Math.max(...values))}, latest hour ${formatNumber(last)}`
  );
}

export function Sparkline({
  metric,
  points,
  hours = 24,
  width = 96,
  height = 24,
}: {
  metric: string;
  points: readonly SparkPoint[];
  hours?: number;
  width?: number;
  height?: number;
}) {
  const coords = sparklinePoints(points, width, height);
  const summary = sparklineSummary(metric, points, hours);
  const single = coords !== '' && !coords.includes(' ');
  const [cx, cy] = single ? coords.split(',').map(Number) : [0, 0];
  return (
    <svg
      role="img"
      aria-label={summary}
      width={width}
      height={height}
      viewBox={`0 0 ${width} ${height}`}
      focusable="false"
      data-testid="sparkline"
    >
      <title>{summary}</title>
      {single ? (
        <circle cx={cx} cy={cy} r={1.5} fill="currentColor" />
      ) : (
        coords && (
          <polyline
            points={coords}
            fill="none"
            stroke="currentColor"
            strokeWidth={1.5}
            strokeLinejoin="round"
            strokeLinecap="round"
          />
        )
      )}
    </svg>
  );
}
