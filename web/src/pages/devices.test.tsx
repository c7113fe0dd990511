import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
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
      path: '/api/v1/telemetry/sparklines',
      body: {
        items: [
          {
            device: 'freezer-1',
            metric: EVIL,
            points: [
              ['2026-11-22T08:00:00Z', -18.5],
              ['2026-11-22T09:00:00Z', -17.25],
              ['2026-11-22T10:00:00Z', -18],
            ],
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

  it('asks the server to filter and sort, and resets to the first page', async () => {
    const { calls } = mockFetch(routes());
    renderApp(<Devices />, { path: '/devices?online=offline&offset=100' });
    expect(await screen.findByText('freezer-1')).toBeInTheDocument(); // the server's page, as is
    const listed = () =>
      calls
        .filter((c) => c.url.startsWith('/api/v1/devices?'))
        .map((c) => new URL(c.url, 'http://x').searchParams);
    expect(listed()[0]?.get('online')).toBe('false');
    expect(listed()[0]?.get('offset')).toBe('100');
    expect(listed()[0]?.get('limit')).toBe('100');

    await userEvent.click(screen.getByRole('button', { name: /^last seen/i }));
    expect(screen.getByRole('columnheader', { name: /last seen/i })).toHaveAttribute(
      'aria-sort',
      'descending',
    );
    await waitFor(() => expect(listed().at(-1)?.get('sort')).toBe('-last_seen'));
    expect(listed().at(-1)?.get('offset')).toBe('0'); // back to the first page
    await userEvent.click(screen.getByRole('button', { name: /^last seen/i }));
    await waitFor(() => expect(listed().at(-1)?.get('sort')).toBe('last_seen'));
    await userEvent.click(screen.getByRole('button', { name: /^device/i }));
    await waitFor(() => expect(listed().at(-1)?.get('sort')).toBeNull()); // uid: the default
    await userEvent.click(screen.getByRole('button', { name: /^device/i }));
    await waitFor(() => expect(listed().at(-1)?.get('sort')).toBe('-uid'));
    expect(screen.getByRole('columnheader', { name: /device/i })).toHaveAttribute(
      'aria-sort',
      'descending',
    );

    await userEvent.type(screen.getByLabelText('Tag'), 'cold-room');
    await waitFor(() => expect(listed().at(-1)?.get('tag')).toBe('cold-room'));
    expect(listed().at(-1)?.get('sort')).toBe('-uid');
  });

  it('draws one sparkline per device from one request for the page', async () => {
    const { calls } = mockFetch(routes());
    renderApp(<Devices />, { path: '/devices' });
    const line = await screen.findByRole('img', { name: /last 24 h: -18\.5 to -17\.25/ });
    expect(line.querySelector('polyline')?.getAttribute('points')?.split(' ')).toHaveLength(3);
    expect(screen.getAllByTestId('sparkline')).toHaveLength(1); // the other device has no data
    const asked = calls.filter((c) => c.url.startsWith('/api/v1/telemetry/sparklines'));
    expect(asked).toHaveLength(1);
    const params = new URL(asked[0]?.url ?? '', 'http://x').searchParams;
    expect(params.getAll('device')).toEqual(['freezer-1', EVIL]);
    expect(params.get('hours')).toBe('24');
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
