import { useEffect, useMemo, useState } from 'react';
import {
  Badge,
  Box,
  Button,
  Field,
  Flex,
  HStack,
  Input,
  Link,
  Table,
  Text,
  Wrap,
} from '@chakra-ui/react';
import { keepPreviousData, useQuery, useQueryClient } from '@tanstack/react-query';
import { Link as RouterLink, useSearchParams } from 'react-router';
import { api } from '../api/client';
import type { DevicePage, LatestList, SparklineList } from '../api/types';
import {
  Empty,
  ErrorBox,
  Loading,
  OnlineBadge,
  PageTitle,
  SelectField,
  When,
} from '../components/ui';
import { Sparkline } from '../components/Sparkline';
import { deviceTags, formatNumber } from '../lib/format';
import { useLive } from '../lib/live';

const PAGE = 100;
const SPARK_HOURS = 24;
type SortKey = 'uid' | 'name' | 'type' | 'last_seen';
type Sort = SortKey | `-${SortKey}`;
const SORTS: readonly Sort[] = [
  'uid',
  '-uid',
  'name',
  '-name',
  'type',
  '-type',
  'last_seen',
  '-last_seen',
];
// The dashboard's connection filter in the URL → the API's `online`.
const ONLINE: Record<string, 'true' | 'false' | 'unknown'> = {
  online: 'true',
  offline: 'false',
  unknown: 'unknown',
};

export function useDebounced<T>(value: T, ms = 300): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setDebounced(value), ms);
    return () => clearTimeout(timer);
  }, [value, ms]);
  return debounced;
}

export default function Devices() {
  const [params, setParams] = useSearchParams();
  const [search, setSearch] = useState(params.get('q') ?? '');
  const q = useDebounced(search);
  const type = params.get('type') ?? '';
  const status = params.get('status') ?? '';
  const online = params.get('online') ?? '';
  const [tagInput, setTagInput] = useState(params.get('tag') ?? '');
  const tag = useDebounced(tagInput.trim());
  const offset = Number(params.get('offset') ?? '0') || 0;
  const sortParam = params.get('sort') ?? 'uid';
  const sort: Sort = (SORTS as readonly string[]).includes(sortParam) ? (sortParam as Sort) : 'uid';
  const sortKey = sort.replace(/^-/, '') as SortKey;
  const desc = sort.startsWith('-');
  const queryClient = useQueryClient();

  const set = (changes: Record<string, string>) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) {
      if (v) next.set(k, v);
      else next.delete(k);
    }
    if (!('offset' in changes)) next.delete('offset');
    setParams(next, { replace: true });
  };

  useEffect(() => {
    if ((params.get('q') ?? '') !== q) set({ q });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [q]);
  useEffect(() => {
    if ((params.get('tag') ?? '') !== tag) set({ tag });
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [tag]);

  // Sorting and filtering are the server's: every page is a page of the whole fleet.
  const query = {
    q,
    type,
    status,
    tag,
    online: ONLINE[online],
    sort: sort === 'uid' ? undefined : sort,
    limit: PAGE,
    offset,
  };
  const devices = useQuery({
    queryKey: ['devices', query],
    queryFn: ({ signal }) => api.get<DevicePage>('/devices', query, signal),
    placeholderData: keepPreviousData,
    refetchInterval: 30_000,
  });
  const uids = devices.data?.items.map((d) => d.uid) ?? [];
  const latest = useQuery({
    queryKey: ['latest', uids],
    queryFn: ({ signal }) => api.get<LatestList>('/telemetry/latest', { device: uids }, signal),
    enabled: uids.length > 0,
    refetchInterval: 30_000,
  });
  // One request for the whole page's sparklines (hourly: refreshed every few minutes).
  const sparklines = useQuery({
    queryKey: ['sparklines', uids, SPARK_HOURS],
    queryFn: ({ signal }) =>
      api.get<SparklineList>('/telemetry/sparklines', { device: uids, hours: SPARK_HOURS }, signal),
    enabled: uids.length > 0,
    refetchInterval: 300_000,
  });

  // Status changes arrive live: patch the page in place.
  useLive({ types: ['status'] }, (frame) => {
    if (frame.type !== 'status') return;
    queryClient.setQueryData<DevicePage>(['devices', query], (page) =>
      page
        ? {
            ...page,
            items: page.items.map((d) =>
              d.uid === frame.device
                ? { ...d, online: frame.online, last_seen: frame.last_seen }
                : d,
            ),
          }
        : page,
    );
  });

  const latestBy = useMemo(() => {
    const map = new Map<string, LatestList['items']>();
    for (const item of latest.data?.items ?? []) {
      const list = map.get(item.device) ?? [];
      list.push(item);
      map.set(item.device, list);
    }
    return map;
  }, [latest.data]);

  // Per device: the line of its first numeric metric (by name, as the latest values list).
  const sparkBy = useMemo(() => {
    const lines = new Map<string, SparklineList['items']>();
    for (const line of sparklines.data?.items ?? []) {
      const list = lines.get(line.device) ?? [];
      list.push(line);
      lines.set(line.device, list);
    }
    const chosen = new Map<string, SparklineList['items'][number]>();
    for (const [device, list] of lines) {
      const numeric = (latestBy.get(device) ?? []).find((l) => l.value !== null)?.metric;
      const line = list.find((l) => l.metric === numeric) ?? list[0];
      if (line) chosen.set(device, line);
    }
    return chosen;
  }, [sparklines.data, latestBy]);

  const rows = devices.data?.items ?? [];

  const sortButton = (key: SortKey, label: string) => {
    const active = sortKey === key;
    // A new column starts ascending, but last seen starts with the most recent.
    const next: Sort = active ? (desc ? key : `-${key}`) : key === 'last_seen' ? '-last_seen' : key;
    return (
      <Button
        variant="plain"
        size="xs"
        px={0}
        fontWeight="semibold"
        onClick={() => set({ sort: next === 'uid' ? '' : next })}
      >
        {label}
        {active ? (desc ? ' ▼' : ' ▲') : ''}
      </Button>
    );
  };

  const header = (keys: [SortKey, string][]) => {
    const active = keys.some(([key]) => key === sortKey);
    return (
      <Table.ColumnHeader
        aria-sort={active ? (desc ? 'descending' : 'ascending') : 'none'}
        whiteSpace="nowrap"
      >
        <HStack gap={2}>
          {keys.map(([key, text]) => (
            <Box as="span" key={key}>
              {sortButton(key, text)}
            </Box>
          ))}
        </HStack>
      </Table.ColumnHeader>
    );
  };

  return (
    <>
      <PageTitle>Devices</PageTitle>
      <Wrap gap={3} mb={4} align="end">
        <Field.Root width={{ base: 'full', sm: '16rem' }}>
          <Field.Label fontSize="xs">Search id or name</Field.Label>
          <Input
            size="sm"
            type="search"
            value={search}
            onChange={(e) => setSearch(e.currentTarget.value)}
            placeholder="greenhouse…"
          />
        </Field.Root>
        <Field.Root width="10rem">
          <Field.Label fontSize="xs">Type</Field.Label>
          <Input size="sm" value={type} onChange={(e) => set({ type: e.currentTarget.value })} />
        </Field.Root>
        <Field.Root width="10rem">
          <Field.Label fontSize="xs">Tag</Field.Label>
          <Input
            size="sm"
            value={tagInput}
            onChange={(e) => setTagInput(e.currentTarget.value)}
            placeholder="exact tag"
          />
        </Field.Root>
        <SelectField
          label="Status"
          width="9rem"
          value={status}
          onChange={(v) => set({ status: v })}
          options={['', 'active', 'disabled']}
        />
        <SelectField
          label="Connection"
          width="9rem"
          value={online}
          onChange={(v) => set({ online: v })}
          options={['', 'online', 'offline', 'unknown']}
        />
      </Wrap>
      <ErrorBox error={devices.error} />
      {devices.isPending ? (
        <Loading />
      ) : rows.length === 0 ? (
        <Empty>No devices match.</Empty>
      ) : (
        <Box overflowX="auto" borderWidth="1px" borderRadius="md">
          <Table.Root size="sm" stickyHeader interactive>
            <Table.Header>
              <Table.Row>
                {header([
                  ['uid', 'Device'],
                  ['name', 'Name'],
                ])}
                <Table.ColumnHeader>Status</Table.ColumnHeader>
                {header([['type', 'Type']])}
                <Table.ColumnHeader>Tags</Table.ColumnHeader>
                {header([['last_seen', 'Last seen']])}
                <Table.ColumnHeader>Last {SPARK_HOURS} h</Table.ColumnHeader>
                <Table.ColumnHeader>Latest values</Table.ColumnHeader>
              </Table.Row>
            </Table.Header>
            <Table.Body>
              {rows.map((d) => (
                <Table.Row key={d.uid}>
                  <Table.Cell maxW="16rem">
                    <Link asChild fontWeight="medium" wordBreak="break-all">
                      <RouterLink to={`/devices/${encodeURIComponent(d.uid)}`}>{d.uid}</RouterLink>
                    </Link>
                    {d.name && (
                      <Text fontSize="xs" color="fg.muted" truncate>
                        {d.name}
                      </Text>
                    )}
                  </Table.Cell>
                  <Table.Cell>
                    <HStack gap={1}>
                      <OnlineBadge online={d.online} />
                      {d.status !== 'active' && <Badge>{d.status}</Badge>}
                    </HStack>
                  </Table.Cell>
                  <Table.Cell>{d.type ?? '—'}</Table.Cell>
                  <Table.Cell>
                    <Flex gap={1} wrap="wrap">
                      {deviceTags(d.metadata).map((t) => (
                        <Badge key={t} variant="outline">
                          {t}
                        </Badge>
                      ))}
                    </Flex>
                  </Table.Cell>
                  <Table.Cell whiteSpace="nowrap">
                    <When iso={d.last_seen} />
                  </Table.Cell>
                  <Table.Cell color="teal.fg">
                    {(() => {
                      const line = sparkBy.get(d.uid);
                      return line ? (
                        <Sparkline metric={line.metric} points={line.points} hours={SPARK_HOURS} />
                      ) : (
                        <Text as="span" color="fg.muted" fontSize="xs">
                          —
                        </Text>
                      );
                    })()}
                  </Table.Cell>
                  <Table.Cell fontSize="xs">
                    {(latestBy.get(d.uid) ?? []).slice(0, 4).map((l) => (
                      <Text key={l.metric} as="span" mr={3} whiteSpace="nowrap">
                        {l.metric}:{' '}
                        <b>{l.value !== null ? formatNumber(l.value) : (l.text ?? '—')}</b>
                      </Text>
                    ))}
                  </Table.Cell>
                </Table.Row>
              ))}
            </Table.Body>
          </Table.Root>
        </Box>
      )}
      <HStack mt={3} justify="space-between">
        <Text fontSize="sm" color="fg.muted">
          {devices.data ? `Devices ${offset + 1}–${offset + (devices.data.items.length ?? 0)}` : ''}
        </Text>
        <HStack>
          <Button
            size="sm"
            variant="outline"
            disabled={offset === 0}
            onClick={() => set({ offset: String(Math.max(0, offset - PAGE)) })}
          >
            Previous
          </Button>
          <Button
            size="sm"
            variant="outline"
            disabled={devices.data?.next_offset == null}
            onClick={() => set({ offset: String(devices.data?.next_offset ?? 0) })}
          >
            Next
          </Button>
        </HStack>
      </HStack>
    </>
  );
}
