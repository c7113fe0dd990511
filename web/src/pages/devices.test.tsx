import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { Route, Routes } from 'react-router';
import Devices from './Devices';
import DevicePage from './DevicePage';
import { chartData } from './device/Charts';
import { SESSION, mockFetch, renderApp } from '../test/utils';

const EVIL = '<img src=x onerror=alert(1)>';

const device = (uid: string, extra: Record<string, unknown> = {}) => ({
  uid,
  tenant_id: 1,
  tenant: 'acme',
  name: null,
  type: 'freezer',
  status: 'active',
  timezone: null,
  metadata: { tags: ['cold-room'] },
  last_seen: '2026-11-22T10:00:00Z',
  online: true,
  clock_offset_s: 0.4,
  created_at: '2026-11-01T00:00:00Z',
  ...extra,
});

function routes(role = 'operator') {
  return [
    { path: '/api/v1/auth/me', body: { ...SESSION, role } },
    {
      path: '/api/v1/devices',
      body: {
        items: [
          device('freezer-1'),
          device(EVIL, { online: false, name: EVIL, metadata: { tags: [EVIL] } }),
        ],
        next_offset: null,
      },
    },
    {
      path: '/api/v1/telemetry/latest',
      body: {
        items: [
          {
            device: 'freezer-1',
            metric: EVIL,
            ts: '2026-11-22T10:00:00Z',
            value: -18.5,
            text: null,
            flags: [],
          },
        ],
      },
    },
    {
      path: '/api/v1/devices/freezer-1',
      body: device('freezer-1', { metadata: { tags: [EVIL] } }),
    },
    { path: '/api/v1/devices/freezer-1/latest', body: { items: [] } },
  ];
}

describe('devices', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('lists devices with status, tags and latest values, names as text only', async () => {
    mockFetch(routes());
    const { container } = renderApp(<Devices />, { path: '/devices' });
    expect(await screen.findByText('freezer-1')).toBeInTheDocument();
    expect(screen.getAllByText(EVIL).length).toBeGreaterThanOrEqual(3); // uid, name, tag
    expect(await screen.findByText(`${EVIL}:`, { exact: false })).toBeInTheDocument();
    expect(container.querySelector('img')).toBeNull();
    expect(screen.getAllByText('offline').length).toBeGreaterThan(0);
  });

  it('filters by connection state and sorts by column', async () => {
    mockFetch(routes());
    renderApp(<Devices />, { path: '/devices?online=offline' });
    expect(await screen.findByText(EVIL, { selector: 'a' })).toBeInTheDocument();
    expect(screen.queryByText('freezer-1')).toBeNull();
    await userEvent.click(screen.getByRole('button', { name: /device/i }));
    expect(screen.getByRole('columnheader', { name: /device/i })).toHaveAttribute(
      'aria-sort',
      'descending',
    );
  });

  it('shows a viewer no edit controls on the device page', async () => {
    mockFetch(routes('viewer'));
    renderApp(
      <Routes>
        <Route path="/devices/:uid" element={<DevicePage />} />
      </Routes>,
      { path: '/devices/freezer-1', authed: true },
    );
    expect(await screen.findByRole('heading', { name: /freezer-1/ })).toBeInTheDocument();
    await userEvent.click(screen.getByRole('tab', { name: 'Details' }));
    expect(screen.queryByRole('button', { name: /save changes/i })).toBeNull();
    expect(screen.queryByRole('button', { name: /rotate token/i })).toBeNull();
  });

  it('lets an operator rotate a token and shows it once', async () => {
    const { calls } = mockFetch([
      ...routes('operator'),
      {
        method: 'POST',
        path: '/api/v1/devices/freezer-1/token',
        body: { uid: 'freezer-1', token: 'tok-NEW', broker: null },
      },
    ]);
    renderApp(
      <Routes>
        <Route path="/devices/:uid" element={<DevicePage />} />
      </Routes>,
      { path: '/devices/freezer-1', authed: true },
    );
    await userEvent.click(await screen.findByRole('tab', { name: 'Settings' }));
    await userEvent.click(screen.getByRole('button', { name: /rotate token/i }));
    await userEvent.click(screen.getByRole('button', { name: /rotate now/i }));
    expect(await screen.findByTestId('new-token')).toHaveTextContent('tok-NEW');
    expect(calls.find((c) => c.method === 'POST')?.headers['X-CSRF-Token']).toBe('csrf-123');
    await userEvent.click(screen.getByRole('button', { name: /done, hide it/i }));
    expect(screen.queryByText('tok-NEW')).toBeNull();
  });
});

describe('chart data', () => {
  it('appends live points after the last bucket and drops those before the range', () => {
    const series = {
      metric: 't',
      points: [
        { ts: '2026-01-01T00:00:00Z', avg: 1, min: 0, max: 2 },
        { ts: '2026-01-01T00:01:00Z', avg: 2, min: 1, max: 3 },
      ],
    } as never;
    const t0 = Date.parse('2026-01-01T00:00:00Z') / 1000;
    const live = { t: [t0 + 30, t0 + 90], v: [9, 5] };
    const [xs, avg, min, max] = chartData(series, live, t0);
    expect(xs).toEqual([t0, t0 + 60, t0 + 90]);
    expect(avg).toEqual([1, 2, 5]);
    expect(min).toEqual([0, 1, 5]);
    expect(max).toEqual([2, 3, 5]);
    expect(chartData(series, undefined, t0 + 1)[0]).toEqual([t0 + 60]);
  });
});
