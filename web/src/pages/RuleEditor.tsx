import { useEffect, useState } from 'react';
import type { FormEvent, ReactNode } from 'react';
import {
  Badge,
  Box,
  Button,
  Card,
  Checkbox,
  Field,
  Heading,
  HStack,
  Input,
  SimpleGrid,
  Stack,
  Text,
  Textarea,
} from '@chakra-ui/react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useNavigate, useParams } from 'react-router';
import { api } from '../api/client';
import { roleAtLeast } from '../api/types';
import type { PreviewOut, Rule } from '../api/types';
import { useSession } from '../auth/AuthContext';
import { ErrorBox, Loading, PageTitle, SelectField } from '../components/ui';
import { formatTime } from '../lib/format';
import { useDebounced } from './Devices';
import { EMPTY_FORM, KINDS, OPS, formFromRule, validate } from './ruleForm';
import type { Errors, RuleForm } from './ruleForm';

function TextField({
  label,
  field,
  form,
  errors,
  onChange,
  helper,
  placeholder,
}: {
  label: string;
  field: keyof RuleForm;
  form: RuleForm;
  errors: Errors;
  onChange: (field: keyof RuleForm, value: string) => void;
  helper?: ReactNode;
  placeholder?: string;
}) {
  return (
    <Field.Root invalid={!!errors[field]}>
      <Field.Label>{label}</Field.Label>
      <Input
        size="sm"
        value={String(form[field])}
        placeholder={placeholder}
        onChange={(e) => onChange(field, e.currentTarget.value)}
      />
      {errors[field] ? (
        <Field.ErrorText>{errors[field]}</Field.ErrorText>
      ) : (
        helper && <Field.HelperText>{helper}</Field.HelperText>
      )}
    </Field.Root>
  );
}

function Preview({ body }: { body: ReturnType<typeof validate>['body'] }) {
  const rule = useDebounced(body, 600);
  const key = JSON.stringify(rule);
  const preview = useQuery({
    queryKey: ['rule-preview', key],
    queryFn: () => api.post<PreviewOut>('/rules/preview', { rule, from: '-24h', to: 'now' }),
    enabled: !!rule && rule.kind !== 'quality',
    staleTime: 60_000,
  });
  return (
    <Card.Root size="sm">
      <Card.Header>
        <Heading as="h2" size="sm">
          Preview over the last 24 hours
        </Heading>
      </Card.Header>
      <Card.Body aria-live="polite">
        {!rule ? (
          <Text color="fg.muted">Complete the rule to preview it.</Text>
        ) : rule.kind === 'quality' ? (
          <Text color="fg.muted">
            Quality rules cannot be previewed: their history is not kept.
          </Text>
        ) : preview.isFetching && !preview.data ? (
          <Loading label="Evaluating…" />
        ) : preview.error ? (
          <ErrorBox error={preview.error} />
        ) : preview.data ? (
          <>
            <Text fontSize="sm" mb={2}>
              {`${preview.data.readings} readings of ${preview.data.devices} devices: `}
              <b>{`${preview.data.transitions.filter((t) => t.event === 'fired').length} fired`}</b>
              {`, ${preview.data.transitions.filter((t) => t.event === 'resolved').length} resolved`}
              {preview.data.truncated ? ' (truncated: too many readings)' : ''}
            </Text>
            <Stack gap={1} maxH="20rem" overflowY="auto">
              {preview.data.transitions.map((t, i) => (
                <HStack key={i} fontSize="sm" align="start" wrap="wrap">
                  <Badge
                    colorPalette={
                      t.event === 'fired' ? 'red' : t.event === 'resolved' ? 'green' : 'orange'
                    }
                  >
                    {t.event}
                  </Badge>
                  <Text>{formatTime(t.at)}</Text>
                  <Text fontWeight="medium" wordBreak="break-all">
                    {t.device}
                  </Text>
                  <Text color="fg.muted">{t.message}</Text>
                </HStack>
              ))}
            </Stack>
          </>
        ) : null}
      </Card.Body>
    </Card.Root>
  );
}

function Editor({ rule }: { rule: Rule | null }) {
  const session = useSession();
  const canEdit = roleAtLeast(session.role, 'operator');
  const navigate = useNavigate();
  const queryClient = useQueryClient();
  const [form, setForm] = useState<RuleForm>(() => (rule ? formFromRule(rule) : EMPTY_FORM));
  const [touched, setTouched] = useState(!!rule);
  const { errors, body } = validate(form);
  const shown: Errors = touched ? errors : {};
  const set = (field: keyof RuleForm, value: string | boolean) => {
    setTouched(true);
    setForm((f) => ({ ...f, [field]: value }));
  };
  const save = useMutation({
    mutationFn: () =>
      rule ? api.patch<Rule>(`/rules/${rule.id}`, body) : api.post<Rule>('/rules', body),
    onSuccess: () => {
      void queryClient.invalidateQueries({ queryKey: ['rules'] });
      navigate('/rules');
    },
  });
  const remove = useMutation({
    mutationFn: () => api.delete(`/rules/${rule?.id}`),
    onSuccess: () => {
      void queryClient.invalidateQueries({ queryKey: ['rules'] });
      navigate('/rules');
    },
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    setTouched(true);
    if (body) save.mutate();
  }
  const tf = (label: string, field: keyof RuleForm, helper?: string, placeholder?: string) => (
    <TextField
      label={label}
      field={field}
      form={form}
      errors={shown}
      onChange={set}
      helper={helper}
      placeholder={placeholder}
    />
  );
  return (
    <SimpleGrid columns={{ base: 1, lg: 2 }} gap={6} alignItems="start">
      <form onSubmit={submit} aria-label="Rule">
        <fieldset disabled={!canEdit}>
          <Stack gap={3}>
            {tf('Name', 'name')}
            <SimpleGrid columns={{ base: 1, sm: 2 }} gap={3}>
              <SelectField
                label="Kind"
                size="md"
                value={form.kind}
                onChange={(v) => set('kind', v)}
                options={[...KINDS]}
              />
              <SelectField
                label="Severity"
                size="md"
                value={form.severity}
                onChange={(v) => set('severity', v)}
                options={['info', 'warning', 'critical']}
              />
            </SimpleGrid>
            {form.kind !== 'quality' &&
              tf(form.kind === 'no_data' ? 'Metric (optional: any)' : 'Metric', 'metric')}
            {form.kind === 'threshold' && (
              <>
                <SelectField
                  label="Condition"
                  size="md"
                  value={form.thresholdMode}
                  onChange={(v) => set('thresholdMode', v)}
                  options={[
                    { value: 'op', label: 'compare with a value' },
                    { value: 'outside', label: 'outside a range' },
                    { value: 'inside', label: 'inside a range' },
                  ]}
                />
                {form.thresholdMode === 'op' ? (
                  <SimpleGrid columns={2} gap={3}>
                    <SelectField
                      label="Operator"
                      size="md"
                      value={form.op}
                      onChange={(v) => set('op', v)}
                      options={[...OPS]}
                    />
                    {tf('Value', 'value')}
                  </SimpleGrid>
                ) : (
                  <SimpleGrid columns={2} gap={3}>
                    {tf('Low', 'lo')}
                    {tf('High', 'hi')}
                  </SimpleGrid>
                )}
              </>
            )}
            {form.kind === 'rate' && (
              <SimpleGrid columns={{ base: 2, md: 4 }} gap={3}>
                <SelectField
                  label="Operator"
                  size="md"
                  value={form.op}
                  onChange={(v) => set('op', v)}
                  options={[...OPS]}
                />
                {tf('Change', 'value')}
                {tf('Per', 'per')}
                {tf('Window', 'window')}
              </SimpleGrid>
            )}
            {form.kind === 'no_data' && tf('Silent for', 'silence', 'e.g. 5m')}
            {form.kind === 'quality' && (
              <>
                <SelectField
                  label="Watch"
                  size="md"
                  value={form.qualityMode}
                  onChange={(v) => set('qualityMode', v)}
                  options={[
                    { value: 'rejection_rate', label: 'share of rejected messages' },
                    { value: 'clock_offset', label: 'clock offset' },
                  ]}
                />
                {form.qualityMode === 'rejection_rate' ? (
                  <SimpleGrid columns={3} gap={3}>
                    {tf('Rejected share', 'rejectionRate', '0–1')}
                    {tf('Window', 'window')}
                    {tf('Min. messages', 'minMessages')}
                  </SimpleGrid>
                ) : (
                  tf('Clock off by more than', 'clockOffset')
                )}
              </>
            )}
            {form.kind === 'anomaly' && (
              <SimpleGrid columns={3} gap={3}>
                {tf('Sigma', 'sigma')}
                {tf('Half-life', 'halflife')}
                {tf('Warm-up readings', 'warmup')}
              </SimpleGrid>
            )}
            {form.kind !== 'no_data' &&
              tf('For', 'for', 'how long the condition must hold: 0s, 2m …')}
            {(form.kind === 'threshold' || form.kind === 'rate') && (
              <Box>
                <Checkbox.Root
                  checked={form.clearOn}
                  onCheckedChange={(d) => set('clearOn', d.checked === true)}
                >
                  <Checkbox.HiddenInput />
                  <Checkbox.Control />
                  <Checkbox.Label>Clear only when (hysteresis)</Checkbox.Label>
                </Checkbox.Root>
                {form.clearOn && (
                  <SimpleGrid columns={2} gap={3} mt={2}>
                    <SelectField
                      label="Clear operator"
                      size="md"
                      value={form.clearOp}
                      onChange={(v) => set('clearOp', v)}
                      options={[...OPS]}
                    />
                    {tf('Clear value', 'clearValue')}
                  </SimpleGrid>
                )}
              </Box>
            )}
            <SimpleGrid columns={{ base: 1, sm: 2 }} gap={3}>
              <SelectField
                label="Scope"
                size="md"
                value={form.scopeKind}
                onChange={(v) => set('scopeKind', v)}
                options={[
                  { value: 'all', label: 'all devices' },
                  { value: 'devices', label: 'these devices' },
                  { value: 'type', label: 'devices of a type' },
                  { value: 'tag', label: 'devices with a tag' },
                ]}
              />
              {form.scopeKind !== 'all' &&
                tf(
                  form.scopeKind === 'devices'
                    ? 'Devices (comma-separated)'
                    : form.scopeKind === 'type'
                      ? 'Type'
                      : 'Tag',
                  'scopeValue',
                )}
            </SimpleGrid>
            <Checkbox.Root
              checked={form.enabled}
              onCheckedChange={(d) => set('enabled', d.checked === true)}
            >
              <Checkbox.HiddenInput />
              <Checkbox.Control />
              <Checkbox.Label>Enabled</Checkbox.Label>
            </Checkbox.Root>
            <Field.Root invalid={!!shown.channels}>
              <Field.Label>Notification channels (JSON)</Field.Label>
              <Textarea
                fontFamily="mono"
                fontSize="sm"
                rows={4}
                value={form.channels}
                onChange={(e) => set('channels', e.currentTarget.value)}
              />
              {shown.channels ? (
                <Field.ErrorText>{shown.channels}</Field.ErrorText>
              ) : (
                <Field.HelperText>
                  {
                    'e.g. [{"kind": "webhook", "url": "https://…", "secret": "…"}]; secrets are write-only and kept when sent back as shown'
                  }
                </Field.HelperText>
              )}
            </Field.Root>
            <ErrorBox error={save.error ?? remove.error} />
            {canEdit && (
              <HStack>
                <Button
                  type="submit"
                  colorPalette="teal"
                  loading={save.isPending}
                  disabled={touched && !body}
                >
                  {rule ? 'Save rule' : 'Create rule'}
                </Button>
                {rule && (
                  <Button
                    variant="outline"
                    colorPalette="red"
                    loading={remove.isPending}
                    onClick={() => {
                      if (
                        window.confirm(
                          `Delete the rule “${rule.name}”? Its open alerts are resolved.`,
                        )
                      )
                        remove.mutate();
                    }}
                  >
                    Delete
                  </Button>
                )}
              </HStack>
            )}
          </Stack>
        </fieldset>
      </form>
      <Preview body={body} />
    </SimpleGrid>
  );
}

export default function RuleEditor() {
  const { id } = useParams();
  const rule = useQuery({
    queryKey: ['rule', id],
    queryFn: ({ signal }) =>
      api.get<Rule>(`/rules/${encodeURIComponent(id ?? '')}`, undefined, signal),
    enabled: !!id,
  });
  const [title, setTitle] = useState('New alert rule');
  useEffect(() => {
    if (rule.data) setTitle(rule.data.name);
  }, [rule.data]);
  if (id && rule.isPending) return <Loading />;
  if (id && rule.error) return <ErrorBox error={rule.error} />;
  return (
    <>
      <PageTitle>{title}</PageTitle>
      <Editor key={id ?? 'new'} rule={rule.data ?? null} />
    </>
  );
}
