import { Badge, Box, Card, Code, Heading, SimpleGrid, Stat, Text } from '@chakra-ui/react';
import { useQuery } from '@tanstack/react-query';
import { api, seg } from '../../api/client';
import type { Clock, DeadLetterPage, Quality } from '../../api/types';
import { TimeChart, type ChartData } from '../../components/TimeChart';
import { Empty, ErrorBox, Loading, ReasonCounts, When } from '../../components/ui';
import { formatNumber, formatOffset } from '../../lib/format';

const LABELS: Record<string, string> = {
  accepted: 'Accepted',
  duplicate: 'Duplicates',
  conflict: 'Conflicts',
  late: 'Late',
  out_of_order: 'Out of order',
};

export function QualityPanel({ uid }: { uid: string }) {
  const quality = useQuery({
    queryKey: ['quality', uid],
    queryFn: ({ signal }) => api.get<Quality>(`/devices/${seg(uid)}/quality`, undefined, signal),
    refetchInterval: 30_000,
  });
  if (quality.isPending) return <Loading />;
  if (quality.error) return <ErrorBox error={quality.error} />;
  const q = quality.data;
  const plain = Object.entries(q.counters).filter(([k]) => !k.startsWith('rejected:'));
  const rejected = Object.entries(q.rejected_by_reason).sort((a, b) => b[1] - a[1]);
  const total = (q.counters.accepted ?? 0) + rejected.reduce((n, [, v]) => n + v, 0);
  return (
    <Box>
      <SimpleGrid columns={{ base: 2, md: 4 }} gap={4} mb={6}>
        {plain.map(([key, value]) => (
          <Stat.Root key={key} borderWidth="1px" borderRadius="md" p={3}>
            <Stat.Label>{LABELS[key] ?? key}</Stat.Label>
            <Stat.ValueText>{formatNumber(value)}</Stat.ValueText>
          </Stat.Root>
        ))}
        <Stat.Root borderWidth="1px" borderRadius="md" p={3}>
          <Stat.Label>Rejected</Stat.Label>
          <Stat.ValueText>
            {formatNumber(rejected.reduce((n, [, v]) => n + v, 0))}
            {total > 0 && (
              <Text as="span" fontSize="sm" color="fg.muted" ml={2}>
                {`${formatNumber((100 * rejected.reduce((n, [, v]) => n + v, 0)) / total, 1)} %`}
              </Text>
            )}
          </Stat.ValueText>
        </Stat.Root>
        <Stat.Root borderWidth="1px" borderRadius="md" p={3}>
          <Stat.Label>Clock offset</Stat.Label>
          <Stat.ValueText>{formatOffset(q.clock_offset_s)}</Stat.ValueText>
          <Stat.HelpText asChild>
            <dd>device time − receive time</dd>
          </Stat.HelpText>
        </Stat.Root>
        <Stat.Root borderWidth="1px" borderRadius="md" p={3}>
          <Stat.Label>Last seen</Stat.Label>
          <Stat.ValueText fontSize="md">
            <When iso={q.last_seen} />
          </Stat.ValueText>
        </Stat.Root>
      </SimpleGrid>
      <ClockOverTime uid={uid} />
      <Heading as="h3" size="sm" mb={2}>
        Rejected by reason
      </Heading>
      <ReasonCounts counts={rejected} empty="Nothing was rejected." maxW="md" />
    </Box>
  );
}

export function DeadLetters({ uid }: { uid: string }) {
  const letters = useQuery({
    queryKey: ['deadletters', uid],
    queryFn: ({ signal }) =>
      api.get<DeadLetterPage>('/deadletters', { device: uid, limit: 50 }, signal),
  });
  if (letters.isPending) return <Loading />;
  if (letters.error) return <ErrorBox error={letters.error} />;
  if (letters.data.items.length === 0) return <Empty>No dead letters: nothing was rejected.</Empty>;
  return (
    <Box>
      {letters.data.items.map((d) => (
        <Card.Root key={d.id} size="sm" mb={3}>
          <Card.Body>
            <Box display="flex" flexWrap="wrap" gap={2} alignItems="center" mb={1}>
              <Badge colorPalette="red">{d.reason}</Badge>
              {d.metric && <Code>{d.metric}</Code>}
              <Text fontSize="sm" color="fg.muted">
                <When iso={d.received_at} /> · {d.source}
                {d.topic ? ` · ${d.topic}` : ''}
              </Text>
              {d.replayed && <Badge variant="outline">{`replayed: ${d.replayed.outcome}`}</Badge>}
            </Box>
            <Text fontSize="sm" mb={2}>
              {d.detail}
            </Text>
            <details>
              <summary>{`Raw payload (${formatNumber(d.payload_size)} bytes)`}</summary>
              <pre className="payload">{d.payload ?? '(not kept)'}</pre>
            </details>
          </Card.Body>
        </Card.Root>
      ))}
    </Box>
  );
}

/** The clock offset per hour over the last 7 days, read back from the stored readings. */
function ClockOverTime({ uid }: { uid: string }) {
  const clock = useQuery({
    queryKey: ['clock', uid],
    queryFn: ({ signal }) =>
      api.get<Clock>(`/devices/${seg(uid)}/clock`, { from: '-7d', bucket: '1h' }, signal),
    refetchInterval: 60_000,
  });
  if (clock.isPending) return <Loading />;
  if (clock.error) return <ErrorBox error={clock.error} />;
  const points = clock.data.points;
  if (points.length === 0) return null;
  const data: ChartData = [
    points.map((p) => Date.parse(p.ts) / 1000),
    points.map((p) => p.offset_s),
    points.map((p) => p.offset_s),
    points.map((p) => p.offset_s),
  ];
  return (
    <Box mb={6}>
      <Heading as="h3" size="sm" mb={1}>
        Clock offset over the last 7 days (s)
      </Heading>
      <Text fontSize="sm" color="fg.muted" mb={2}>
        Per hour, the reading that travelled fastest: device time − receive time.
      </Text>
      <TimeChart title="clock offset" data={data} height={160} />
    </Box>
  );
}
