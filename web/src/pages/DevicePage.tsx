import { Badge, Box, Code, HStack, Link, Tabs, Text, Wrap } from '@chakra-ui/react';
import { useQuery, useQueryClient } from '@tanstack/react-query';
import { Link as RouterLink, useParams } from 'react-router';
import { api, seg } from '../api/client';
import { roleAtLeast } from '../api/types';
import type { Device } from '../api/types';
import { useSession } from '../auth/AuthContext';
import { ErrorBox, Loading, OnlineBadge, PageTitle, When } from '../components/ui';
import { deviceTags, formatOffset } from '../lib/format';
import { useLive } from '../lib/live';
import { Charts } from './device/Charts';
import { DeadLetters, QualityPanel } from './device/Quality';
import { Credentials, MetadataForm } from './device/Settings';

export default function DevicePage() {
  const { uid = '' } = useParams();
  const session = useSession();
  const queryClient = useQueryClient();
  const canEdit = roleAtLeast(session.role, 'operator');
  const device = useQuery({
    queryKey: ['device', uid],
    queryFn: ({ signal }) => api.get<Device>(`/devices/${seg(uid)}`, undefined, signal),
  });
  useLive({ devices: [uid], types: ['status'] }, (frame) => {
    if (frame.type === 'status' && frame.device === uid) {
      queryClient.setQueryData<Device>(['device', uid], (d) =>
        d ? { ...d, online: frame.online, last_seen: frame.last_seen } : d,
      );
    }
  });

  if (device.isPending) return <Loading />;
  if (device.error) return <ErrorBox error={device.error} />;
  const d = device.data;
  return (
    <>
      <Text fontSize="sm" mb={1}>
        <Link asChild>
          <RouterLink to="/devices">← Devices</RouterLink>
        </Link>
      </Text>
      <PageTitle
        actions={
          <HStack>
            <OnlineBadge online={d.online} />
            {d.status !== 'active' && <Badge>{d.status}</Badge>}
          </HStack>
        }
      >
        {d.uid}
        {d.name && (
          <Text as="span" fontSize="md" color="fg.muted" ml={3}>
            {d.name}
          </Text>
        )}
      </PageTitle>
      <Wrap gap={5} mb={4} fontSize="sm" color="fg.muted">
        <Text>
          Type: <Code>{d.type ?? '—'}</Code>
        </Text>
        <Text>
          Last seen: <When iso={d.last_seen} />
        </Text>
        <Text>Clock offset: {formatOffset(d.clock_offset_s)}</Text>
        <Text>Tenant: {d.tenant}</Text>
        {deviceTags(d.metadata).length > 0 && (
          <HStack gap={1}>
            <Text>Tags:</Text>
            {deviceTags(d.metadata).map((t) => (
              <Badge key={t} variant="outline">
                {t}
              </Badge>
            ))}
          </HStack>
        )}
      </Wrap>
      <Tabs.Root defaultValue="charts" lazyMount unmountOnExit={false}>
        <Tabs.List overflowX="auto">
          <Tabs.Trigger value="charts">Charts</Tabs.Trigger>
          <Tabs.Trigger value="quality">Quality</Tabs.Trigger>
          <Tabs.Trigger value="deadletters">Dead letters</Tabs.Trigger>
          <Tabs.Trigger value="settings">{canEdit ? 'Settings' : 'Details'}</Tabs.Trigger>
        </Tabs.List>
        <Tabs.Content value="charts">
          <Charts uid={uid} />
        </Tabs.Content>
        <Tabs.Content value="quality">
          <QualityPanel uid={uid} />
        </Tabs.Content>
        <Tabs.Content value="deadletters">
          <DeadLetters uid={uid} />
        </Tabs.Content>
        <Tabs.Content value="settings">
          {canEdit ? (
            <>
              <MetadataForm key={d.uid} device={d} />
              <Credentials uid={uid} />
            </>
          ) : (
            <Box>
              <Text mb={2}>Metadata</Text>
              <pre className="payload">{JSON.stringify(d.metadata, null, 2)}</pre>
            </Box>
          )}
        </Tabs.Content>
      </Tabs.Root>
    </>
  );
}
