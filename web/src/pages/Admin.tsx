import { useState } from 'react';
import type { FormEvent } from 'react';
import {
  Badge,
  Box,
  Button,
  Checkbox,
  Field,
  Heading,
  HStack,
  Input,
  Table,
  Tabs,
  Text,
  Wrap,
} from '@chakra-ui/react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { api } from '../api/client';
import { ROLES, roleAtLeast } from '../api/types';
import type {
  CleaningRuleIn,
  CleaningRuleList,
  Tenant,
  TenantPage,
  User,
  UserPage,
} from '../api/types';
import { useSession } from '../auth/AuthContext';
import { Empty, ErrorBox, Loading, PageTitle, SelectField } from '../components/ui';

function Users() {
  const session = useSession();
  const queryClient = useQueryClient();
  const users = useQuery({
    queryKey: ['users'],
    queryFn: ({ signal }) => api.get<UserPage>('/users', { limit: 1000 }, signal),
  });
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState('viewer');
  const refresh = () => void queryClient.invalidateQueries({ queryKey: ['users'] });
  const create = useMutation({
    mutationFn: () => api.post<User>('/users', { username, password, role }),
    onSuccess: () => {
      setUsername('');
      setPassword('');
      refresh();
    },
  });
  const patch = useMutation({
    mutationFn: ({ id, body }: { id: number; body: Record<string, unknown> }) =>
      api.patch<User>(`/users/${id}`, body),
    onSuccess: refresh,
  });
  const remove = useMutation({
    mutationFn: (id: number) => api.delete(`/users/${id}`),
    onSuccess: refresh,
  });
  // Owners give roles up to their own; only admins make admins.
  const grantable = ROLES.filter(
    (r) => roleAtLeast(session.role, r) && (r !== 'admin' || session.role === 'admin'),
  );
  function submit(e: FormEvent) {
    e.preventDefault();
    create.mutate();
  }
  return (
    <Box>
      <form onSubmit={submit} aria-label="New user">
        <Wrap gap={3} align="end" mb={4}>
          <Field.Root width="12rem">
            <Field.Label fontSize="xs">Username</Field.Label>
            <Input
              size="sm"
              value={username}
              onChange={(e) => setUsername(e.currentTarget.value)}
              autoComplete="off"
            />
          </Field.Root>
          <Field.Root width="12rem">
            <Field.Label fontSize="xs">Password</Field.Label>
            <Input
              size="sm"
              type="password"
              value={password}
              autoComplete="new-password"
              onChange={(e) => setPassword(e.currentTarget.value)}
            />
          </Field.Root>
          <SelectField
            label="Role"
            width="9rem"
            value={role}
            onChange={setRole}
            options={grantable}
          />
          <Button
            type="submit"
            size="sm"
            colorPalette="teal"
            loading={create.isPending}
            disabled={!username || !password}
          >
            Add user
          </Button>
        </Wrap>
      </form>
      <ErrorBox error={create.error ?? patch.error ?? remove.error} />
      {users.isPending ? (
        <Loading />
      ) : users.error ? (
        <ErrorBox error={users.error} />
      ) : (
        <Box overflowX="auto" borderWidth="1px" borderRadius="md">
          <Table.Root size="sm">
            <Table.Header>
              <Table.Row>
                <Table.ColumnHeader>User</Table.ColumnHeader>
                <Table.ColumnHeader>Tenant</Table.ColumnHeader>
                <Table.ColumnHeader>Role</Table.ColumnHeader>
                <Table.ColumnHeader>State</Table.ColumnHeader>
                <Table.ColumnHeader />
              </Table.Row>
            </Table.Header>
            <Table.Body>
              {users.data.items.map((u) => {
                const self = u.username === session.username;
                return (
                  <Table.Row key={u.id}>
                    <Table.Cell wordBreak="break-all">{u.username}</Table.Cell>
                    <Table.Cell>{u.tenant}</Table.Cell>
                    <Table.Cell>
                      {self || !grantable.includes(u.role as (typeof ROLES)[number]) ? (
                        u.role
                      ) : (
                        <SelectField
                          label={`Role of ${u.username}`}
                          value={u.role}
                          onChange={(r) => patch.mutate({ id: u.id, body: { role: r } })}
                          options={grantable}
                          size="xs"
                        />
                      )}
                    </Table.Cell>
                    <Table.Cell>
                      {u.disabled ? (
                        <Badge>disabled</Badge>
                      ) : (
                        <Badge colorPalette="green">active</Badge>
                      )}
                    </Table.Cell>
                    <Table.Cell textAlign="end">
                      {!self && (
                        <HStack justify="end">
                          <Button
                            size="xs"
                            variant="outline"
                            onClick={() =>
                              patch.mutate({ id: u.id, body: { disabled: !u.disabled } })
                            }
                          >
                            {u.disabled ? 'Enable' : 'Disable'}
                          </Button>
                          <Button
                            size="xs"
                            variant="outline"
                            colorPalette="red"
                            onClick={() => {
                              if (window.confirm(`Delete the user ${u.username}?`))
                                remove.mutate(u.id);
                            }}
                          >
                            Delete
                          </Button>
                        </HStack>
                      )}
                    </Table.Cell>
                  </Table.Row>
                );
              })}
            </Table.Body>
          </Table.Root>
        </Box>
      )}
    </Box>
  );
}

function TimeZone({ tenant }: { tenant: Tenant }) {
  const queryClient = useQueryClient();
  const [tz, setTz] = useState(tenant.timezone ?? '');
  const [name, setName] = useState(tenant.name);
  const session = useSession();
  const save = useMutation({
    mutationFn: () =>
      api.patch<Tenant>(`/tenants/${tenant.id}`, {
        timezone: tz || null,
        ...(session.role === 'admin' && name !== tenant.name ? { name } : {}),
      }),
    onSuccess: () => void queryClient.invalidateQueries({ queryKey: ['tenants'] }),
  });
  return (
    <form
      onSubmit={(e) => {
        e.preventDefault();
        save.mutate();
      }}
    >
      <Wrap gap={2} align="end">
        {session.role === 'admin' ? (
          <Field.Root width="12rem">
            <Field.Label fontSize="xs">Name</Field.Label>
            <Input size="sm" value={name} onChange={(e) => setName(e.currentTarget.value)} />
          </Field.Root>
        ) : (
          <Text fontWeight="medium" minW="8rem">
            {tenant.name}
          </Text>
        )}
        <Field.Root width="14rem">
          <Field.Label fontSize="xs">Time zone (IANA)</Field.Label>
          <Input
            size="sm"
            value={tz}
            placeholder="Europe/Berlin"
            onChange={(e) => setTz(e.currentTarget.value)}
          />
        </Field.Root>
        <Button type="submit" size="sm" variant="outline" loading={save.isPending}>
          Save
        </Button>
        {save.isSuccess && <Text color="green.fg">Saved.</Text>}
      </Wrap>
      <ErrorBox error={save.error} />
    </form>
  );
}

function Tenants() {
  const session = useSession();
  const queryClient = useQueryClient();
  const tenants = useQuery({
    queryKey: ['tenants'],
    queryFn: ({ signal }) => api.get<TenantPage>('/tenants', { limit: 1000 }, signal),
  });
  const [name, setName] = useState('');
  const create = useMutation({
    mutationFn: () => api.post<Tenant>('/tenants', { name }),
    onSuccess: () => {
      setName('');
      void queryClient.invalidateQueries({ queryKey: ['tenants'] });
    },
  });
  if (tenants.isPending) return <Loading />;
  if (tenants.error) return <ErrorBox error={tenants.error} />;
  return (
    <Box>
      {session.role === 'admin' && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            create.mutate();
          }}
        >
          <Wrap gap={3} align="end" mb={4}>
            <Field.Root width="14rem">
              <Field.Label fontSize="xs">New tenant</Field.Label>
              <Input size="sm" value={name} onChange={(e) => setName(e.currentTarget.value)} />
            </Field.Root>
            <Button
              type="submit"
              size="sm"
              colorPalette="teal"
              disabled={!name}
              loading={create.isPending}
            >
              Create tenant
            </Button>
          </Wrap>
          <ErrorBox error={create.error} />
        </form>
      )}
      {tenants.data.items.map((t) => (
        <Box key={t.id} borderBottomWidth="1px" py={3}>
          <TimeZone tenant={t} />
        </Box>
      ))}
    </Box>
  );
}

function CleaningRules() {
  const session = useSession();
  const queryClient = useQueryClient();
  const rules = useQuery({
    queryKey: ['cleaning-rules'],
    queryFn: ({ signal }) => api.get<CleaningRuleList>('/cleaning-rules', undefined, signal),
  });
  const [form, setForm] = useState({
    metric: '',
    device_type: '',
    min: '',
    max: '',
    unit: '',
    kind: '',
    all: false,
  });
  const refresh = () => void queryClient.invalidateQueries({ queryKey: ['cleaning-rules'] });
  const numOrNull = (v: string) => (v.trim() === '' ? null : Number(v));
  const invalid =
    !form.metric.trim() ||
    [form.min, form.max].some((v) => v.trim() !== '' && !Number.isFinite(Number(v))) ||
    (numOrNull(form.min) !== null &&
      numOrNull(form.max) !== null &&
      Number(form.min) > Number(form.max));
  const put = useMutation({
    mutationFn: () => {
      const body: CleaningRuleIn = {
        metric: form.metric.trim(),
        device_type: form.device_type.trim() || null,
        min: numOrNull(form.min),
        max: numOrNull(form.max),
        unit: form.unit.trim() || null,
        kind: (form.kind || null) as CleaningRuleIn['kind'],
        all_tenants: form.all,
      };
      return api.put('/cleaning-rules', body);
    },
    onSuccess: refresh,
  });
  const remove = useMutation({
    mutationFn: (id: number) => api.delete(`/cleaning-rules/${id}`),
    onSuccess: refresh,
  });
  const set = (k: keyof typeof form, v: string | boolean) => setForm((f) => ({ ...f, [k]: v }));
  return (
    <Box>
      <Text fontSize="sm" color="fg.muted" mb={3}>
        Which values are valid, per metric and device type: values outside the range are rejected
        and kept as dead letters. A stored rule replaces only the fields it sets; workers pick
        changes up within 30 s.
      </Text>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (!invalid) put.mutate();
        }}
        aria-label="Cleaning rule"
      >
        <Wrap gap={3} align="end" mb={4}>
          {(['metric', 'device_type', 'min', 'max', 'unit'] as const).map((k) => (
            <Field.Root key={k} width="9rem" invalid={k === 'max' && invalid && form.metric !== ''}>
              <Field.Label fontSize="xs">{k === 'device_type' ? 'device type' : k}</Field.Label>
              <Input size="sm" value={form[k]} onChange={(e) => set(k, e.currentTarget.value)} />
            </Field.Root>
          ))}
          <SelectField
            label="kind"
            width="8rem"
            value={form.kind}
            onChange={(v) => set('kind', v)}
            options={['', 'gauge', 'counter']}
          />
          {session.role === 'admin' && (
            <Checkbox.Root
              checked={form.all}
              onCheckedChange={(d) => set('all', d.checked === true)}
            >
              <Checkbox.HiddenInput />
              <Checkbox.Control />
              <Checkbox.Label>all tenants</Checkbox.Label>
            </Checkbox.Root>
          )}
          <Button
            type="submit"
            size="sm"
            colorPalette="teal"
            disabled={invalid}
            loading={put.isPending}
          >
            Set rule
          </Button>
        </Wrap>
      </form>
      <ErrorBox error={put.error ?? remove.error} />
      {rules.isPending ? (
        <Loading />
      ) : rules.error ? (
        <ErrorBox error={rules.error} />
      ) : rules.data.items.length === 0 ? (
        <Empty>No cleaning rules.</Empty>
      ) : (
        <Box overflowX="auto" borderWidth="1px" borderRadius="md">
          <Table.Root size="sm">
            <Table.Header>
              <Table.Row>
                {['Metric', 'Device type', 'Min', 'Max', 'Unit', 'Kind', 'Source', ''].map((h) => (
                  <Table.ColumnHeader key={h}>{h}</Table.ColumnHeader>
                ))}
              </Table.Row>
            </Table.Header>
            <Table.Body>
              {rules.data.items.map((r, i) => (
                <Table.Row key={r.id ?? `builtin-${i}`}>
                  <Table.Cell>{r.metric}</Table.Cell>
                  <Table.Cell>{r.device_type ?? 'any'}</Table.Cell>
                  <Table.Cell>{r.min ?? '—'}</Table.Cell>
                  <Table.Cell>{r.max ?? '—'}</Table.Cell>
                  <Table.Cell>{r.unit ?? '—'}</Table.Cell>
                  <Table.Cell>{r.kind ?? '—'}</Table.Cell>
                  <Table.Cell>
                    <Badge variant="outline">
                      {r.source === 'tenant' ? (r.tenant ?? 'tenant') : r.source}
                    </Badge>
                  </Table.Cell>
                  <Table.Cell textAlign="end">
                    {r.id !== null && (r.source === 'tenant' || session.role === 'admin') && (
                      <Button
                        size="xs"
                        variant="outline"
                        colorPalette="red"
                        onClick={() => remove.mutate(r.id as number)}
                      >
                        Delete
                      </Button>
                    )}
                  </Table.Cell>
                </Table.Row>
              ))}
            </Table.Body>
          </Table.Root>
        </Box>
      )}
    </Box>
  );
}

export default function Admin() {
  const session = useSession();
  if (!roleAtLeast(session.role, 'owner')) {
    return <ErrorBox error={new Error('Administration is for owners and admins.')} />;
  }
  return (
    <>
      <PageTitle>Administration</PageTitle>
      <Tabs.Root defaultValue="users" lazyMount>
        <Tabs.List overflowX="auto">
          <Tabs.Trigger value="users">Users</Tabs.Trigger>
          <Tabs.Trigger value="tenants">
            {session.role === 'admin' ? 'Tenants' : 'Tenant'}
          </Tabs.Trigger>
          <Tabs.Trigger value="cleaning">Cleaning rules</Tabs.Trigger>
        </Tabs.List>
        <Tabs.Content value="users">
          <Heading as="h2" size="sm" mb={3}>
            Users and roles
          </Heading>
          <Users />
        </Tabs.Content>
        <Tabs.Content value="tenants">
          <Tenants />
        </Tabs.Content>
        <Tabs.Content value="cleaning">
          <CleaningRules />
        </Tabs.Content>
      </Tabs.Root>
    </>
  );
}
