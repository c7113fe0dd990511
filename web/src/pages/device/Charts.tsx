import { useEffect, useMemo, useState } from 'react';
import {
  Box,
  Button,
  Card,
  Field,
  HStack,
  Input,
  Link,
  SimpleGrid,
  Text,
  Wrap,
} from '@chakra-ui/react';
import { keepPreviousData, useQuery } from '@tanstack/react-query';
import { api, queryString, seg } from '../../api/client';
import type { Aggregate, LatestList } from '../../api/types';
import { TimeChart } from '../../components/TimeChart';
import type { ChartData } from '../../components/TimeChart';
import { Empty, ErrorBox, Loading, SelectField } from '../../components/ui';
import { useLive } from '../../lib/live';
import type { LiveState } from '../../lib/live';
import { PRESETS, rangeQuery, toLocalInput } from './ranges';
import type { Range } from './ranges';

const MAX_POINTS = 800;
const LIVE_CAP = 5000;

type LivePoints = Record<string, { t: number[]; v: number[] }>;

/** Aggregated buckets plus live points after them, as uPlot's columns. */
export function chartData(
  series: Aggregate['series'][number] | undefined,
  live: { t: number[]; v: number[] } | undefined,
  since: number,
): ChartData {
  const xs: number[] = [];
  const avg: (number | null)[] = [];
  const min: (number | null)[] = [];
  const max: (number | null)[] = [];
  let last = -Infinity;
  for (const p of series?.points ?? []) {
    const t = Date.parse(p.ts) / 1000;
    if (t < since) continue;
    xs.push(t);
    avg.push(p.avg ?? null);
    min.push(p.min ?? p.avg ?? null);
    max.push(p.max ?? p.avg ?? null);
    last = t;
  }
  if (live) {
    for (let i = 0; i < live.t.length; i++) {
      const t = live.t[i]!;
      if (t <= last || t < since) continue;
      const v = live.v[i]!;
      xs.push(t);
      avg.push(v);
      min.push(v);
      max.push(v);
      last = t;
    }
  }
  return [xs, avg, min, max];
}

function LiveBadge({ state }: { state: LiveState }) {
  const text = {
    open: 'live',
    connecting: 'connecting…',
    paused: 'paused',
    closed: 'disconnected',
  }[state];
  return (
    <Text
      as="span"
      fontSize="sm"
      color={state === 'open' ? 'green.fg' : 'fg.muted'}
      aria-live="polite"
    >
      ● {text}
    </Text>
  );
}

export function Charts({ uid }: { uid: string }) {
  const [range, setRange] = useState<Range>({ kind: 'preset', preset: PRESETS[3]! });
  const [customFrom, setCustomFrom] = useState(() =>
    toLocalInput(new Date(Date.now() - 86400_000)),
  );
  const [customTo, setCustomTo] = useState(() => toLocalInput(new Date()));
  const [paused, setPaused] = useState(false);
  const [live, setLive] = useState<LivePoints>({});
  const [now, setNow] = useState(() => Date.now());

  const latest = useQuery({
    queryKey: ['device-latest', uid],
    queryFn: ({ signal }) => api.get<LatestList>(`/devices/${seg(uid)}/latest`, undefined, signal),
  });
  const metrics = useMemo(
    () =>
      [
        ...new Set((latest.data?.items ?? []).filter((l) => l.value !== null).map((l) => l.metric)),
      ].sort(),
    [latest.data],
  );
  const { from, to } = rangeQuery(range);
  const aggregate = useQuery({
    queryKey: ['aggregate', uid, metrics, from, to],
    queryFn: ({ signal }) =>
      api.get<Aggregate>(
        `/devices/${seg(uid)}/aggregate`,
        { metric: metrics, from, to, bucket: 'auto', max_points: MAX_POINTS },
        signal,
      ),
    enabled: metrics.length > 0,
    placeholderData: keepPreviousData,
  });

  // A new range starts from the history again; live points are kept only after it.
  useEffect(() => {
    setLive({});
    setNow(Date.now());
  }, [from, to]);

  const following = range.kind === 'preset';
  const liveState = useLive(
    { devices: [uid], types: ['readings'], enabled: following && !paused },
    (frame) => {
      if (frame.type !== 'readings' || frame.device !== uid) return;
      setLive((prev) => {
        const next = { ...prev };
        for (const p of frame.points) {
          if (typeof p.value !== 'number') continue;
          const cur = next[p.metric] ?? { t: [], v: [] };
          const t = [...cur.t, Date.parse(p.ts) / 1000].slice(-LIVE_CAP);
          const v = [...cur.v, p.value].slice(-LIVE_CAP);
          next[p.metric] = { t, v };
        }
        return next;
      });
      setNow(Date.now());
    },
  );

  const since =
    range.kind === 'preset' ? now / 1000 - range.preset.seconds : range.from.getTime() / 1000;
  const seriesBy = useMemo(
    () => new Map((aggregate.data?.series ?? []).map((s) => [s.metric, s])),
    [aggregate.data],
  );

  function applyCustom() {
    const f = new Date(customFrom);
    const t = new Date(customTo);
    if (Number.isNaN(f.getTime()) || Number.isNaN(t.getTime()) || f >= t) return;
    setRange({ kind: 'custom', from: f, to: t });
  }
  const customInvalid = !(new Date(customFrom) < new Date(customTo));

  const exportHref = (format: 'csv' | 'parquet') =>
    `/api/v1/devices/${seg(uid)}/export${queryString({ format, from, to })}`;

  return (
    <Box>
      <Wrap gap={3} align="end" mb={4}>
        <SelectField
          label="Range"
          width="10rem"
          value={range.kind === 'preset' ? range.preset.id : 'custom'}
          onChange={(id) => {
            const preset = PRESETS.find((p) => p.id === id);
            if (preset) setRange({ kind: 'preset', preset });
            else applyCustom();
          }}
          options={[
            ...PRESETS.map((p) => ({ value: p.id, label: `Last ${p.label}` })),
            { value: 'custom', label: 'Custom…' },
          ]}
        />
        <Field.Root width="13rem" invalid={customInvalid}>
          <Field.Label fontSize="xs">From</Field.Label>
          <Input
            size="sm"
            type="datetime-local"
            value={customFrom}
            onChange={(e) => setCustomFrom(e.currentTarget.value)}
          />
        </Field.Root>
        <Field.Root width="13rem" invalid={customInvalid}>
          <Field.Label fontSize="xs">To</Field.Label>
          <Input
            size="sm"
            type="datetime-local"
            value={customTo}
            onChange={(e) => setCustomTo(e.currentTarget.value)}
          />
        </Field.Root>
        <Button size="sm" variant="outline" onClick={applyCustom} disabled={customInvalid}>
          Show custom range
        </Button>
        <HStack gap={2}>
          {following ? (
            <>
              <Button
                size="sm"
                variant="outline"
                onClick={() => setPaused((p) => !p)}
                aria-pressed={paused}
              >
                {paused ? 'Resume live' : 'Pause live'}
              </Button>
              <LiveBadge state={liveState} />
            </>
          ) : (
            <Text fontSize="sm" color="fg.muted">
              Live updates follow the “last …” ranges.
            </Text>
          )}
        </HStack>
        <HStack gap={3} ml="auto">
          <Text fontSize="sm">Export:</Text>
          <Link href={exportHref('csv')} download fontSize="sm">
            CSV
          </Link>
          <Link href={exportHref('parquet')} download fontSize="sm">
            Parquet
          </Link>
        </HStack>
      </Wrap>
      <ErrorBox error={latest.error ?? aggregate.error} />
      {latest.isPending || (metrics.length > 0 && aggregate.isPending) ? (
        <Loading label="Loading history…" />
      ) : metrics.length === 0 ? (
        <Empty>This device has no numeric readings yet.</Empty>
      ) : (
        <>
          {aggregate.data && (
            <Text fontSize="xs" color="fg.muted" mb={2}>
              {`Buckets of ${aggregate.data.bucket} (from the ${aggregate.data.source} data); the band shows min to max.`}
            </Text>
          )}
          <SimpleGrid columns={{ base: 1, xl: 2 }} gap={4}>
            {metrics.map((metric) => (
              <Card.Root key={metric} size="sm">
                <Card.Header>
                  <Text as="h3" fontWeight="semibold" wordBreak="break-all">
                    {metric}
                  </Text>
                </Card.Header>
                <Card.Body>
                  <TimeChart
                    title={metric}
                    data={chartData(
                      seriesBy.get(metric),
                      following ? live[metric] : undefined,
                      since,
                    )}
                  />
                </Card.Body>
              </Card.Root>
            ))}
          </SimpleGrid>
        </>
      )}
    </Box>
  );
}
