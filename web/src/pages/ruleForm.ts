// The rule editor's form: its fields, validation as you type, and the API body it becomes.
import type { Rule } from '../api/types';

export const KINDS = ['threshold', 'rate', 'no_data', 'quality', 'anomaly'] as const;
export const OPS = ['>', '>=', '<', '<=', '==', '!='] as const;
const DURATION = /^\d+[smhd]$/;

export interface RuleForm {
  name: string;
  kind: string;
  metric: string;
  severity: string;
  enabled: boolean;
  for: string;
  scopeKind: 'all' | 'devices' | 'type' | 'tag';
  scopeValue: string;
  // threshold
  thresholdMode: 'op' | 'outside' | 'inside';
  op: string;
  value: string;
  lo: string;
  hi: string;
  clearOn: boolean;
  clearOp: string;
  clearValue: string;
  // rate
  per: string;
  window: string;
  // no_data
  silence: string;
  // quality
  qualityMode: 'rejection_rate' | 'clock_offset';
  rejectionRate: string;
  minMessages: string;
  clockOffset: string;
  // anomaly
  sigma: string;
  halflife: string;
  warmup: string;
  channels: string;
}

export const EMPTY_FORM: RuleForm = {
  name: '',
  kind: 'threshold',
  metric: '',
  severity: 'warning',
  enabled: true,
  for: '0s',
  scopeKind: 'all',
  scopeValue: '',
  thresholdMode: 'op',
  op: '>',
  value: '',
  lo: '',
  hi: '',
  clearOn: false,
  clearOp: '<',
  clearValue: '',
  per: '1m',
  window: '10m',
  silence: '5m',
  qualityMode: 'rejection_rate',
  rejectionRate: '0.2',
  minMessages: '10',
  clockOffset: '30s',
  sigma: '4',
  halflife: '1h',
  warmup: '50',
  channels: '[]',
};

const str = (v: unknown, fallback = ''): string =>
  v === null || v === undefined ? fallback : String(v);

export function formFromRule(rule: Rule): RuleForm {
  const c = rule.condition as Record<string, unknown>;
  const clear = (rule.clear ?? null) as Record<string, unknown> | null;
  const scope = rule.scope as Record<string, unknown>;
  const f: RuleForm = {
    ...EMPTY_FORM,
    name: rule.name,
    kind: rule.kind,
    metric: rule.metric ?? '',
    severity: rule.severity,
    enabled: rule.enabled,
    for: rule.for ?? '0s',
    channels: JSON.stringify(rule.channels, null, 2),
  };
  if (Array.isArray(scope.devices)) {
    f.scopeKind = 'devices';
    f.scopeValue = (scope.devices as string[]).join(', ');
  } else if (typeof scope.type === 'string') {
    f.scopeKind = 'type';
    f.scopeValue = scope.type;
  } else if (typeof scope.tag === 'string') {
    f.scopeKind = 'tag';
    f.scopeValue = scope.tag;
  }
  if (rule.kind === 'threshold') {
    const range = (c.outside ?? c.inside) as unknown[] | undefined;
    if (Array.isArray(range)) {
      f.thresholdMode = c.outside ? 'outside' : 'inside';
      f.lo = str(range[0]);
      f.hi = str(range[1]);
    } else {
      f.op = str(c.op, '>');
      f.value = str(c.value);
    }
  }
  if (rule.kind === 'rate') {
    f.op = str(c.op, '>');
    f.value = str(c.value);
    f.per = str(c.per, '1m');
    f.window = str(c.window, '10m');
  }
  if (clear) {
    f.clearOn = true;
    f.clearOp = str(clear.op, '<');
    f.clearValue = str(clear.value);
  }
  if (rule.kind === 'no_data') f.silence = str(c.for, '5m');
  if (rule.kind === 'quality') {
    if (c.clock_offset !== undefined) {
      f.qualityMode = 'clock_offset';
      f.clockOffset = str(c.clock_offset);
    } else {
      f.rejectionRate = str(c.rejection_rate, '0.2');
      f.window = str(c.window, '15m');
      f.minMessages = str(c.min_messages, '10');
    }
  }
  if (rule.kind === 'anomaly') {
    f.sigma = str(c.sigma, '4');
    f.halflife = str(c.halflife, '1h');
    f.warmup = str(c.warmup, '50');
  }
  return f;
}

export type Errors = Partial<Record<keyof RuleForm, string>>;

export interface RuleBody {
  name: string;
  kind: string;
  metric: string | null;
  condition: Record<string, unknown>;
  for: string | null;
  clear: Record<string, unknown> | null;
  scope: Record<string, unknown>;
  severity: string;
  enabled: boolean;
  channels: Record<string, unknown>[];
}

/** Errors by field, and the rule's body when there are none. */
export function validate(f: RuleForm): { errors: Errors; body: RuleBody | null } {
  const errors: Errors = {};
  const num = (key: keyof RuleForm, v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n)) errors[key] = 'Enter a number';
    return n;
  };
  const dur = (key: keyof RuleForm, v: string): string => {
    if (!DURATION.test(v.trim()))
      errors[key] = 'A whole number with s, m, h or d, such as 30s, 5m, 2h, 1d';
    return v.trim();
  };
  if (!f.name.trim()) errors.name = 'A rule needs a name';
  else if (f.name.length > 200) errors.name = 'At most 200 characters';
  const needsMetric = ['threshold', 'rate', 'anomaly'].includes(f.kind);
  if (needsMetric && !f.metric.trim()) errors.metric = `A ${f.kind} rule watches a metric`;
  let condition: Record<string, unknown> = {};
  let clear: Record<string, unknown> | null = null;
  if (f.kind === 'threshold') {
    if (f.thresholdMode === 'op') condition = { op: f.op, value: num('value', f.value) };
    else {
      const lo = num('lo', f.lo);
      const hi = num('hi', f.hi);
      if (!errors.lo && !errors.hi && lo > hi)
        errors.hi = 'The upper bound must not be below the lower';
      condition = { [f.thresholdMode]: [lo, hi] };
    }
  } else if (f.kind === 'rate') {
    condition = {
      op: f.op,
      value: num('value', f.value),
      per: dur('per', f.per),
      window: dur('window', f.window),
    };
  } else if (f.kind === 'no_data') {
    condition = { for: dur('silence', f.silence) };
  } else if (f.kind === 'quality') {
    if (f.qualityMode === 'clock_offset')
      condition = { clock_offset: dur('clockOffset', f.clockOffset) };
    else {
      const rate = num('rejectionRate', f.rejectionRate);
      if (!errors.rejectionRate && (rate <= 0 || rate > 1))
        errors.rejectionRate = 'A share between 0 and 1';
      condition = {
        rejection_rate: rate,
        window: dur('window', f.window),
        min_messages: num('minMessages', f.minMessages),
      };
    }
  } else if (f.kind === 'anomaly') {
    condition = {
      sigma: num('sigma', f.sigma),
      halflife: dur('halflife', f.halflife),
      warmup: num('warmup', f.warmup),
    };
  }
  if ((f.kind === 'threshold' || f.kind === 'rate') && f.clearOn) {
    clear = { op: f.clearOp, value: num('clearValue', f.clearValue) };
  }
  if (f.kind !== 'no_data') dur('for', f.for);
  let scope: Record<string, unknown> = {};
  if (f.scopeKind !== 'all') {
    const v = f.scopeValue.trim();
    if (!v) errors.scopeValue = 'Name the devices, type or tag';
    scope =
      f.scopeKind === 'devices'
        ? {
            devices: v
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean),
          }
        : { [f.scopeKind]: v };
  }
  let channels: Record<string, unknown>[] = [];
  try {
    const parsed: unknown = JSON.parse(f.channels || '[]');
    if (!Array.isArray(parsed)) errors.channels = 'A JSON list of channels';
    else channels = parsed as Record<string, unknown>[];
  } catch {
    errors.channels = 'Not valid JSON';
  }
  if (Object.keys(errors).length) return { errors, body: null };
  return {
    errors,
    body: {
      name: f.name.trim(),
      kind: f.kind,
      metric: f.kind === 'quality' ? null : f.metric.trim() || null,
      condition,
      for: f.kind === 'no_data' ? null : f.for.trim(),
      clear,
      scope,
      severity: f.severity,
      enabled: f.enabled,
      channels,
    },
  };
}
