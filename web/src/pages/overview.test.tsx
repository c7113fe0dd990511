import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen } from '@testing-library/react';
import Overview from './Overview';
import Admin from './Admin';
import { SESSION, mockFetch, renderApp } from '../test/utils';

const EVIL = '<img src=x onerror=alert(1)>';

describe('overview', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('shows counts, rejections, drift and a map without fetching anything else', async () => {
    const { calls } = mockFetch([
      { path: '/api/v1/auth/me', body: SESSION },
      {
        path: '/api/v1/overview',
        body: {
          devices: { total: 20, online: 17, offline: 2, unknown: 1 },
          readings_per_s: 48.2,
          alerts_open: { info: 0, warning: 1, critical: 2 },
          rejections_last_hour: { out_of_range: 4, future_timestamp: 1 },
          clock_drift: [{ device: EVIL, clock_offset_s: 496 }],
          located: [
            { device: 'gh-1', name: EVIL, lat: 52.5, lon: 13.4, online: true },
            { device: 'gh-2', name: null, lat: 48.1, lon: 11.6, online: false },
          ],
        },
      },
    ]);
    const { container } = renderApp(<Overview />, { path: '/', authed: true });
    expect(await screen.findByText('48.2')).toBeInTheDocument();
    expect(screen.getByText('out_of_range')).toBeInTheDocument();
    expect(screen.getByText(EVIL)).toBeInTheDocument();
    expect(screen.getByText('+496.0 s')).toBeInTheDocument();
    expect(screen.getByRole('link', { name: `${EVIL} (online)` })).toBeInTheDocument();
    expect(container.querySelector('img')).toBeNull();
    expect(calls.every((c) => c.url.startsWith('/api/v1/'))).toBe(true);
  });
});

describe('administration', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('is closed to operators', async () => {
    mockFetch([{ path: '/api/v1/auth/me', body: SESSION }]);
    renderApp(<Admin />, { path: '/admin', authed: true });
    expect(await screen.findByText(/for owners and admins/)).toBeInTheDocument();
  });

  it('lists an owner’s users with the roles an owner may grant', async () => {
    mockFetch([
      { path: '/api/v1/auth/me', body: { ...SESSION, role: 'owner' } },
      {
        path: '/api/v1/users',
        body: {
          items: [
            {
              id: 1,
              username: 'maria',
              tenant_id: 1,
              tenant: 'acme',
              role: 'owner',
              disabled: false,
              created_at: '',
            },
            {
              id: 2,
              username: 'li',
              tenant_id: 1,
              tenant: 'acme',
              role: 'viewer',
              disabled: false,
              created_at: '',
            },
          ],
          next_offset: null,
        },
      },
    ]);
    renderApp(<Admin />, { path: '/admin', authed: true });
    const select = await screen.findByLabelText('Role of li');
    const options = [...(select as HTMLSelectElement).options].map((o) => o.value);
    expect(options).toEqual(['viewer', 'operator', 'owner']);
    expect(screen.getByRole('button', { name: 'Disable' })).toBeInTheDocument();
  });
});
