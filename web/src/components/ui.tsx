import {
  Alert,
  Badge,
  Box,
  Center,
  Code,
  Field,
  NativeSelect,
  Spinner,
  Table,
  Text,
} from '@chakra-ui/react';
import type { ReactNode } from 'react';
import { errorMessage } from '../api/client';
import { formatNumber, timeAgo, formatTime } from '../lib/format';

export function ErrorBox({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  return (
    <Alert.Root status="error" my={2}>
      <Alert.Indicator />
      <Alert.Content>
        {title && <Alert.Title>{title}</Alert.Title>}
        <Alert.Description>{errorMessage(error)}</Alert.Description>
      </Alert.Content>
    </Alert.Root>
  );
}

export function Loading({ label = 'Loading…' }: { label?: string }) {
  return (
    <Center py={8} role="status" aria-live="polite">
      <Spinner size="md" mr={3} />
      <Text>{label}</Text>
    </Center>
  );
}

export function OnlineBadge({ online }: { online: boolean | null | undefined }) {
  if (online === true) return <Badge colorPalette="green">online</Badge>;
  if (online === false) return <Badge colorPalette="red">offline</Badge>;
  return <Badge colorPalette="gray">unknown</Badge>;
}

const SEVERITY_COLOR: Record<string, string> = { info: 'blue', warning: 'orange', critical: 'red' };

export function SeverityBadge({ severity }: { severity: string }) {
  return <Badge colorPalette={SEVERITY_COLOR[severity] ?? 'gray'}>{severity}</Badge>;
}

const STATE_COLOR: Record<string, string> = {
  firing: 'red',
  acknowledged: 'orange',
  resolved: 'green',
};

export function StateBadge({ state, flapping }: { state: string; flapping?: boolean }) {
  return (
    <Badge colorPalette={STATE_COLOR[state] ?? 'gray'}>
      {state}
      {flapping ? ' · flapping' : ''}
    </Badge>
  );
}

export function When({ iso }: { iso: string | null | undefined }) {
  return (
    <time dateTime={iso ?? undefined} title={formatTime(iso)}>
      {timeAgo(iso)}
    </time>
  );
}

export function SelectField({
  label,
  value,
  onChange,
  options,
  size = 'sm',
  width,
}: {
  label: string;
  value: string;
  onChange: (value: string) => void;
  options: readonly (string | { value: string; label: string })[];
  size?: 'xs' | 'sm' | 'md';
  width?: string;
}) {
  return (
    <Field.Root width={width}>
      <Field.Label fontSize="xs">{label}</Field.Label>
      <NativeSelect.Root size={size}>
        <NativeSelect.Field value={value} onChange={(e) => onChange(e.currentTarget.value)}>
          {options.map((o) => {
            const opt = typeof o === 'string' ? { value: o, label: o || 'any' } : o;
            return (
              <option key={opt.value} value={opt.value}>
                {opt.label}
              </option>
            );
          })}
        </NativeSelect.Field>
        <NativeSelect.Indicator />
      </NativeSelect.Root>
    </Field.Root>
  );
}

export function PageTitle({ children, actions }: { children: ReactNode; actions?: ReactNode }) {
  return (
    <Box display="flex" flexWrap="wrap" gap={3} alignItems="center" mb={4}>
      <Text as="h1" fontSize="2xl" fontWeight="semibold" flex="1" minW="0" wordBreak="break-word">
        {children}
      </Text>
      {actions}
    </Box>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return (
    <Text color="fg.muted" py={4}>
      {children}
    </Text>
  );
}

/** Counts by rejection reason, largest first as given; ``empty`` when there are none. */
export function ReasonCounts({
  counts,
  empty,
  maxW,
}: {
  counts: [string, number][];
  empty: string;
  maxW?: string;
}) {
  if (counts.length === 0) return <Empty>{empty}</Empty>;
  return (
    <Table.Root size="sm" maxW={maxW}>
      <Table.Body>
        {counts.map(([reason, n]) => (
          <Table.Row key={reason}>
            <Table.Cell>
              <Code>{reason}</Code>
            </Table.Cell>
            <Table.Cell textAlign="end">{formatNumber(n)}</Table.Cell>
          </Table.Row>
        ))}
      </Table.Body>
    </Table.Root>
  );
}
