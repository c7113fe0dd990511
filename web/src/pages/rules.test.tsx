import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import Alerts from './Alerts';
import RuleEditor from './RuleEditor';
import { EMPTY_FORM, validate } from './ruleForm';
import { SESSION, mockFetch, renderApp } from '../test/utils';

const ALERT = {
  id: 17,
  rule_id: 3,
  rule: '<b>hot</b>',
  device: 'freezer-1',
  metric: 'temperature',
  severity: 'critical',
  state: 'firing',
  flapping: false,
  value: -12.5,
  message: 'temperature -12.5 > -15 for 2m',
  started_at: '2026-11-22T10:02:00Z',
  acknowledged_at: null,
  acknowledged_by: null,
  note: null,
  resolved_at: null,
  resolved_by: null,
  notifications: [],
};

describe('rule form validation', () => {
  it('says what is missing as you type, and builds the body when complete', () => {
    const empty = validate(EMPTY_FORM);
    expect(empty.body).toBeNull();
    expect(empty.errors.name).toBeTruthy();
    expect(empty.errors.metric).toBeTruthy();
    expect(empty.errors.value).toBe('Enter a number');
    const bad = validate({ ...EMPTY_FORM, name: 'x', metric: 't', value: '3', for: '2 min' });
    expect(bad.errors.for).toMatch(/30s, 5m/);
    const ok = validate({
      ...EMPTY_FORM,
      name: 'too warm',
      metric: 'temperature',
      value: '-15',
      for: '2m',
      clearOn: true,
      clearOp: '<=',
      clearValue: '-17',
      scopeKind: 'devices',
      scopeValue: 'freezer-1, freezer-2',
    });
    expect(ok.body).toMatchObject({
      name: 'too warm',
      kind: 'threshold',
      metric: 'temperature',
      condition: { op: '>', value: -15 },
      for: '2m',
      clear: { op: '<=', value: -17 },
      scope: { devices: ['freezer-1', 'freezer-2'] },
    });
  });
});

describe('rule editor', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('previews a complete rule over the last 24 hours', async () => {
    const { calls } = mockFetch([
      { path: '/api/v1/auth/me', body: SESSION },
      {
        method: 'POST',
        path: '/api/v1/rules/preview',
        body: {
          from: '2026-11-21T10:00:00Z',
          to: '2026-11-22T10:00:00Z',
          devices: 1,
          readings: 1440,
          truncated: false,
          transitions: [
            {
              event: 'fired',
              device: 'freezer-1',
              metric: 'temperature',
              at: '2026-11-22T03:12:00Z',
              value: -12.5,
              message: 'temperature -12.5 > -15',
            },
          ],
        },
      },
    ]);
    renderApp(<RuleEditor />, { path: '/rules/new', authed: true });
    await userEvent.type(await screen.findByLabelText('Name'), 'too warm');
    expect(screen.getByText('A threshold rule watches a metric')).toBeInTheDocument();
    await userEvent.type(screen.getByLabelText('Metric'), 'temperature');
    await userEvent.type(screen.getByLabelText('Value'), '-15');
    expect(await screen.findByText('1 fired', {}, { timeout: 3000 })).toBeInTheDocument();
    const preview = calls.find((c) => c.url.endsWith('/rules/preview'));
    expect(preview?.body).toMatchObject({
      from: '-24h',
      rule: { condition: { op: '>', value: -15 } },
    });
    expect(preview?.headers['X-CSRF-Token']).toBe('csrf-123');
  });

  it('shows a viewer the rule without a save button', async () => {
    mockFetch([{ path: '/api/v1/auth/me', body: { ...SESSION, role: 'viewer' } }]);
    renderApp(<RuleEditor />, { path: '/rules/new', authed: true });
    await screen.findByLabelText('Name');
    expect(screen.queryByRole('button', { name: /create rule/i })).toBeNull();
  });
});

describe('alerts', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('acknowledges an alert with a note', async () => {
    const { calls } = mockFetch([
      { path: '/api/v1/auth/me', body: SESSION },
      { path: '/api/v1/alerts', body: { items: [ALERT], next_cursor: null } },
      { method: 'POST', path: '/api/v1/alerts/17/ack', body: { ...ALERT, state: 'acknowledged' } },
    ]);
    renderApp(<Alerts />, { path: '/alerts', authed: true });
    expect(await screen.findByText('<b>hot</b>')).toBeInTheDocument();
    await userEvent.click(screen.getByRole('button', { name: /acknowledge or resolve/i }));
    await userEvent.type(screen.getByLabelText(/note/i), 'door was open');
    await userEvent.click(screen.getByRole('button', { name: 'Acknowledge' }));
    await waitFor(() => expect(calls.some((c) => c.url.endsWith('/alerts/17/ack'))).toBe(true));
    const ack = calls.find((c) => c.url.endsWith('/alerts/17/ack'));
    expect(ack?.body).toEqual({ note: 'door was open' });
    expect(ack?.headers['X-CSRF-Token']).toBe('csrf-123');
    expect(calls.find((c) => c.url.startsWith('/api/v1/alerts?'))?.url).toContain(
      'state=firing%2Cacknowledged',
    );
  });

  it('shows a viewer no acknowledge button', async () => {
    mockFetch([
      { path: '/api/v1/auth/me', body: { ...SESSION, role: 'viewer' } },
      { path: '/api/v1/alerts', body: { items: [ALERT], next_cursor: null } },
    ]);
    renderApp(<Alerts />, { path: '/alerts', authed: true });
    await screen.findByText('<b>hot</b>');
    expect(screen.queryByRole('button', { name: /acknowledge/i })).toBeNull();
  });
});
