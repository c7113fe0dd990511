import { Box, Card, Heading, Link, SimpleGrid, Stat, Table, Text } from '@chakra-ui/react';
import { useQuery } from '@tanstack/react-query';
import { Link as RouterLink, useNavigate } from 'react-router';
import { api } from '../api/client';
import type { Overview as OverviewData } from '../api/types';
import { Empty, ErrorBox, Loading, PageTitle, ReasonCounts } from '../components/ui';
import { formatNumber, formatOffset } from '../lib/format';

function StatCard({
  label,
  value,
  help,
  color,
}: {
  label: string;
  value: string;
  help?: string;
  color?: string;
}) {
  return (
    <Stat.Root borderWidth="1px" borderRadius="md" p={4}>
      <Stat.Label>{label}</Stat.Label>
      <Stat.ValueText color={color}>{value}</Stat.ValueText>
      {help && (
        <Stat.HelpText asChild>
          <dd>{help}</dd>
        </Stat.HelpText>
      )}
    </Stat.Root>
  );
}

/** Located devices as an SVG scatter of longitude and latitude: no tiles, nothing fetched. */
export function DeviceMap({ located }: { located: OverviewData['located'] }) {
  const navigate = useNavigate();
  if (located.length === 0) return <Empty>No device has a location (metadata lat/lon).</Empty>;
  const lats = located.map((l) => l.lat);
  const lons = located.map((l) => l.lon);
  const pad = 0.05;
  let [minLat, maxLat, minLon, maxLon] = [
    Math.min(...lats),
    Math.max(...lats),
    Math.min(...lons),
    Math.max(...lons),
  ];
  const spanLat = Math.max(maxLat - minLat, 0.01);
  const spanLon = Math.max(maxLon - minLon, 0.01);
  minLat -= spanLat * pad;
  maxLat += spanLat * pad;
  minLon -= spanLon * pad;
  maxLon += spanLon * pad;
  const W = 600;
  const H = 320;
  const x = (lon: number) => ((lon - minLon) / (maxLon - minLon)) * W;
  const y = (lat: number) => H - ((lat - minLat) / (maxLat - minLat)) * H;
  return (
    <Box as="figure" borderWidth="1px" borderRadius="md" bg="bg.subtle" p={2}>
      <svg viewBox={`0 0 ${W} ${H}`} width="100%" role="group" aria-label="Map of located devices">
        {located.map((l) => {
          const label = `${l.name ?? l.device} (${l.online === true ? 'online' : l.online === false ? 'offline' : 'unknown'})`;
          return (
            <g
              key={l.device}
              role="link"
              tabIndex={0}
              aria-label={label}
              style={{ cursor: 'pointer' }}
              onClick={() => navigate(`/devices/${encodeURIComponent(l.device)}`)}
              onKeyDown={(e) => {
                if (e.key === 'Enter' || e.key === ' ')
                  navigate(`/devices/${encodeURIComponent(l.device)}`);
              }}
            >
              <title>{label}</title>
              <circle
                cx={x(l.lon)}
                cy={y(l.lat)}
                r={6}
                fill={l.online === true ? '#16a34a' : l.online === false ? '#dc2626' : '#a1a1aa'}
                stroke="white"
                strokeWidth={1.5}
              />
            </g>
          );
        })}
      </svg>
      <Text as="figcaption" fontSize="xs" color="fg.muted">
        {`${located.length} located devices; lat ${minLat.toFixed(3)}…${maxLat.toFixed(3)}, lon ${minLon.toFixed(3)}…${maxLon.toFixed(3)}. Green online, red offline.`}
      </Text>
    </Box>
  );
}

export default function Overview() {
  const overview = useQuery({
    queryKey: ['overview'],
    queryFn: ({ signal }) => api.get<OverviewData>('/overview', undefined, signal),
    refetchInterval: 10_000,
  });
  if (overview.isPending) return <Loading />;
  if (overview.error) return <ErrorBox error={overview.error} />;
  const o = overview.data;
  const rejections = Object.entries(o.rejections_last_hour).sort((a, b) => b[1] - a[1]);
  return (
    <>
      <PageTitle>Overview</PageTitle>
      <SimpleGrid columns={{ base: 2, md: 3, lg: 6 }} gap={4} mb={6}>
        <StatCard label="Devices" value={formatNumber(o.devices.total)} />
        <StatCard label="Online" value={formatNumber(o.devices.online)} color="green.fg" />
        <StatCard
          label="Offline"
          value={formatNumber(o.devices.offline)}
          color={o.devices.offline ? 'red.fg' : undefined}
          help={`${formatNumber(o.devices.unknown)} unknown`}
        />
        <StatCard label="Readings / s" value={formatNumber(o.readings_per_s, 1)} />
        <StatCard
          label="Open alerts"
          value={formatNumber(o.alerts_open.critical + o.alerts_open.warning + o.alerts_open.info)}
          help={`${o.alerts_open.critical} critical · ${o.alerts_open.warning} warning · ${o.alerts_open.info} info`}
          color={o.alerts_open.critical ? 'red.fg' : undefined}
        />
        <StatCard
          label="Rejected (1 h)"
          value={formatNumber(rejections.reduce((n, [, v]) => n + v, 0))}
        />
      </SimpleGrid>
      <SimpleGrid columns={{ base: 1, lg: 2 }} gap={4}>
        <Card.Root size="sm">
          <Card.Header>
            <Heading as="h2" size="md">
              Map
            </Heading>
          </Card.Header>
          <Card.Body>
            <DeviceMap located={o.located} />
          </Card.Body>
        </Card.Root>
        <Box>
          <Card.Root size="sm" mb={4}>
            <Card.Header>
              <Heading as="h2" size="md">
                Rejections in the last hour
              </Heading>
            </Card.Header>
            <Card.Body>
              <ReasonCounts counts={rejections} empty="Nothing rejected." />
            </Card.Body>
          </Card.Root>
          <Card.Root size="sm">
            <Card.Header>
              <Heading as="h2" size="md">
                Clock drift
              </Heading>
            </Card.Header>
            <Card.Body>
              {o.clock_drift.length === 0 ? (
                <Empty>No device’s clock is off.</Empty>
              ) : (
                <Table.Root size="sm">
                  <Table.Body>
                    {o.clock_drift.map((d) => (
                      <Table.Row key={d.device}>
                        <Table.Cell wordBreak="break-all">
                          <Link asChild>
                            <RouterLink to={`/devices/${encodeURIComponent(d.device)}`}>
                              {d.device}
                            </RouterLink>
                          </Link>
                        </Table.Cell>
                        <Table.Cell textAlign="end">{formatOffset(d.clock_offset_s)}</Table.Cell>
                      </Table.Row>
                    ))}
                  </Table.Body>
                </Table.Root>
              )}
            </Card.Body>
          </Card.Root>
        </Box>
      </SimpleGrid>
    </>
  );
}
