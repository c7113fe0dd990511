import { Badge, Box, Button, Code, Link, Table, Text } from '@chakra-ui/react';
import { useQuery } from '@tanstack/react-query';
import { Link as RouterLink } from 'react-router';
import { api } from '../api/client';
import { roleAtLeast } from '../api/types';
import type { RuleList } from '../api/types';
import { useSession } from '../auth/AuthContext';
import { Empty, ErrorBox, Loading, PageTitle, SeverityBadge } from '../components/ui';

export function scopeText(scope: Record<string, unknown>): string {
  if (Array.isArray(scope.devices)) return `devices ${(scope.devices as string[]).join(', ')}`;
  if (typeof scope.type === 'string') return `type ${scope.type}`;
  if (typeof scope.tag === 'string') return `tag ${scope.tag}`;
  return 'all devices';
}

export default function Rules() {
  const session = useSession();
  const canEdit = roleAtLeast(session.role, 'operator');
  const rules = useQuery({
    queryKey: ['rules'],
    queryFn: ({ signal }) => api.get<RuleList>('/rules', undefined, signal),
  });
  return (
    <>
      <PageTitle
        actions={
          canEdit && (
            <Button asChild size="sm" colorPalette="teal">
              <RouterLink to="/rules/new">New rule</RouterLink>
            </Button>
          )
        }
      >
        Alert rules
      </PageTitle>
      <ErrorBox error={rules.error} />
      {rules.isPending ? (
        <Loading />
      ) : !rules.data || rules.data.items.length === 0 ? (
        <Empty>No alert rules yet.</Empty>
      ) : (
        <Box overflowX="auto" borderWidth="1px" borderRadius="md">
          <Table.Root size="sm">
            <Table.Header>
              <Table.Row>
                <Table.ColumnHeader>Name</Table.ColumnHeader>
                <Table.ColumnHeader>Kind</Table.ColumnHeader>
                <Table.ColumnHeader>Condition</Table.ColumnHeader>
                <Table.ColumnHeader>Scope</Table.ColumnHeader>
                <Table.ColumnHeader>Severity</Table.ColumnHeader>
                <Table.ColumnHeader>State</Table.ColumnHeader>
              </Table.Row>
            </Table.Header>
            <Table.Body>
              {rules.data.items.map((r) => (
                <Table.Row key={r.id}>
                  <Table.Cell wordBreak="break-word">
                    <Link asChild fontWeight="medium">
                      <RouterLink to={`/rules/${r.id}`}>{r.name}</RouterLink>
                    </Link>
                  </Table.Cell>
                  <Table.Cell>{r.kind}</Table.Cell>
                  <Table.Cell>
                    <Code fontSize="xs" wordBreak="break-all">
                      {`${r.metric ? `${r.metric} ` : ''}${JSON.stringify(r.condition)}${r.for && r.for !== '0s' ? ` for ${r.for}` : ''}`}
                    </Code>
                  </Table.Cell>
                  <Table.Cell>
                    <Text fontSize="sm">{scopeText(r.scope)}</Text>
                  </Table.Cell>
                  <Table.Cell>
                    <SeverityBadge severity={r.severity} />
                  </Table.Cell>
                  <Table.Cell>
                    {r.enabled ? (
                      <Badge colorPalette="green">enabled</Badge>
                    ) : (
                      <Badge>disabled</Badge>
                    )}
                  </Table.Cell>
                </Table.Row>
              ))}
            </Table.Body>
          </Table.Root>
        </Box>
      )}
    </>
  );
}
