import { useState } from 'react';
import {
  Box,
  Button,
  Card,
  Field,
  HStack,
  Input,
  Link,
  Stack,
  Tabs,
  Text,
  Textarea,
  Wrap,
} from '@chakra-ui/react';
import { useInfiniteQuery, useMutation, useQueryClient } from '@tanstack/react-query';
import { Link as RouterLink, useSearchParams } from 'react-router';
import { api } from '../api/client';
import { roleAtLeast } from '../api/types';
import type { Alert, AlertPage } from '../api/types';
import { useSession } from '../auth/AuthContext';
import {
  Empty,
  ErrorBox,
  Loading,
  PageTitle,
  SelectField,
  SeverityBadge,
  StateBadge,
  When,
} from '../components/ui';
import { useDebounced } from './Devices';
import { formatNumber } from '../lib/format';
import { useLive } from '../lib/live';

function AlertCard({ alert, canAct }: { alert: Alert; canAct: boolean }) {
  const queryClient = useQueryClient();
  const [noting, setNoting] = useState(false);
  const [note, setNote] = useState('');
  const done = () => {
    setNoting(false);
    setNote('');
    void queryClient.invalidateQueries({ queryKey: ['alerts'] });
  };
  const ack = useMutation({
    mutationFn: () => api.post<Alert>(`/alerts/${alert.id}/ack`, { note: note || null }),
    onSuccess: done,
  });
  const resolve = useMutation({
    mutationFn: () => api.post<Alert>(`/alerts/${alert.id}/resolve`, { note: note || null }),
    onSuccess: done,
  });
  const open = alert.state !== 'resolved';
  return (
    <Card.Root size="sm" mb={3} as="article" aria-label={`Alert ${alert.rule} on ${alert.device}`}>
      <Card.Body>
        <Wrap gap={2} align="center" mb={1}>
          <SeverityBadge severity={alert.severity} />
          <StateBadge state={alert.state} flapping={alert.flapping} />
          <Text fontWeight="semibold" wordBreak="break-word">
            {alert.rule}
          </Text>
          <Text color="fg.muted">·</Text>
          <Link asChild wordBreak="break-all">
            <RouterLink to={`/devices/${encodeURIComponent(alert.device)}`}>
              {alert.device}
            </RouterLink>
          </Link>
          {alert.metric && <Text color="fg.muted">{alert.metric}</Text>}
          <Text fontSize="sm" color="fg.muted" ml="auto">
            started <When iso={alert.started_at} />
          </Text>
        </Wrap>
        <Text>{alert.message}</Text>
        {alert.value !== null && (
          <Text fontSize="sm" color="fg.muted">{`value ${formatNumber(alert.value, 4)}`}</Text>
        )}
        {alert.acknowledged_at && (
          <Text fontSize="sm" color="fg.muted">
            acknowledged by {alert.acknowledged_by ?? '—'} <When iso={alert.acknowledged_at} />
            {alert.note ? ` — “${alert.note}”` : ''}
          </Text>
        )}
        {alert.resolved_at && (
          <Text fontSize="sm" color="fg.muted">
            resolved by {alert.resolved_by ?? '—'} <When iso={alert.resolved_at} />
          </Text>
        )}
        {canAct && open && (
          <Box mt={2}>
            {noting ? (
              <Stack gap={2} maxW="lg">
                <Field.Root>
                  <Field.Label fontSize="sm">Note (optional)</Field.Label>
                  <Textarea
                    size="sm"
                    rows={2}
                    value={note}
                    onChange={(e) => setNote(e.currentTarget.value)}
                  />
                </Field.Root>
                <HStack>
                  {alert.state === 'firing' && (
                    <Button
                      size="sm"
                      colorPalette="orange"
                      loading={ack.isPending}
                      onClick={() => ack.mutate()}
                    >
                      Acknowledge
                    </Button>
                  )}
                  <Button
                    size="sm"
                    colorPalette="green"
                    loading={resolve.isPending}
                    onClick={() => resolve.mutate()}
                  >
                    Resolve
                  </Button>
                  <Button size="sm" variant="ghost" onClick={() => setNoting(false)}>
                    Cancel
                  </Button>
                </HStack>
              </Stack>
            ) : (
              <Button size="sm" variant="outline" onClick={() => setNoting(true)}>
                {alert.state === 'firing' ? 'Acknowledge or resolve…' : 'Resolve…'}
              </Button>
            )}
            <ErrorBox error={ack.error ?? resolve.error} />
          </Box>
        )}
      </Card.Body>
    </Card.Root>
  );
}

function AlertList({ open }: { open: boolean }) {
  const session = useSession();
  const [params, setParams] = useSearchParams();
  const severity = params.get('severity') ?? '';
  const [device, setDevice] = useState(params.get('device') ?? '');
  const [rule, setRule] = useState(params.get('rule') ?? '');
  const deviceQ = useDebounced(device);
  const ruleQ = useDebounced(rule);
  const query = {
    state: open ? 'firing,acknowledged' : undefined,
    severity,
    device: deviceQ,
    rule: ruleQ,
    limit: 50,
  };
  const alerts = useInfiniteQuery({
    queryKey: ['alerts', query],
    queryFn: ({ pageParam, signal }) =>
      api.get<AlertPage>('/alerts', { ...query, cursor: pageParam }, signal),
    initialPageParam: undefined as string | undefined,
    getNextPageParam: (last) => last.next_cursor ?? undefined,
  });
  const items = alerts.data?.pages.flatMap((p) => p.items) ?? [];
  return (
    <>
      <Wrap gap={3} mb={4} align="end">
        <SelectField
          label="Severity"
          width="9rem"
          value={severity}
          onChange={(v) => {
            const next = new URLSearchParams(params);
            if (v) next.set('severity', v);
            else next.delete('severity');
            setParams(next, { replace: true });
          }}
          options={['', 'info', 'warning', 'critical']}
        />
        <Field.Root width="12rem">
          <Field.Label fontSize="xs">Device</Field.Label>
          <Input size="sm" value={device} onChange={(e) => setDevice(e.currentTarget.value)} />
        </Field.Root>
        <Field.Root width="12rem">
          <Field.Label fontSize="xs">Rule (id or name)</Field.Label>
          <Input size="sm" value={rule} onChange={(e) => setRule(e.currentTarget.value)} />
        </Field.Root>
      </Wrap>
      <ErrorBox error={alerts.error} />
      {alerts.isPending ? (
        <Loading />
      ) : items.length === 0 ? (
        <Empty>{open ? 'No open alerts.' : 'No alerts match.'}</Empty>
      ) : (
        items.map((a) => (
          <AlertCard key={a.id} alert={a} canAct={roleAtLeast(session.role, 'operator')} />
        ))
      )}
      {alerts.hasNextPage && (
        <Button
          size="sm"
          variant="outline"
          loading={alerts.isFetchingNextPage}
          onClick={() => void alerts.fetchNextPage()}
        >
          Load more
        </Button>
      )}
    </>
  );
}

export default function Alerts() {
  const queryClient = useQueryClient();
  useLive({ types: ['alert'] }, (frame) => {
    if (frame.type === 'alert') void queryClient.invalidateQueries({ queryKey: ['alerts'] });
  });
  return (
    <>
      <PageTitle>Alerts</PageTitle>
      <Tabs.Root defaultValue="open" lazyMount unmountOnExit>
        <Tabs.List>
          <Tabs.Trigger value="open">Open</Tabs.Trigger>
          <Tabs.Trigger value="history">History</Tabs.Trigger>
        </Tabs.List>
        <Tabs.Content value="open">
          <AlertList open />
        </Tabs.Content>
        <Tabs.Content value="history">
          <AlertList open={false} />
        </Tabs.Content>
      </Tabs.Root>
    </>
  );
}
