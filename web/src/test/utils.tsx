import type { ReactElement } from 'react';
import { render } from '@testing-library/react';
import { MemoryRouter } from 'react-router';
import { Providers, RequireAuth, makeQueryClient } from '../App';
import { AuthProvider } from '../auth/AuthContext';
import { vi } from 'vitest';

export interface MockRoute {
  method?: string;
  path: string | RegExp;
  status?: number;
  body?: unknown;
}

export interface Recorded {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: unknown;
}

/** A fetch that answers from `routes` (first match) and records every request. */
export function mockFetch(routes: MockRoute[]) {
  const calls: Recorded[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = typeof input === 'string' ? input : input.toString();
    const method = (init?.method ?? 'GET').toUpperCase();
    const headers = (init?.headers ?? {}) as Record<string, string>;
    calls.push({
      method,
      url,
      headers,
      body: typeof init?.body === 'string' ? JSON.parse(init.body) : null,
    });
    const path = url.split('?')[0] ?? url;
    const route = routes.find(
      (r) =>
        (r.method ?? 'GET') === method &&
        (typeof r.path === 'string' ? r.path === path : r.path.test(url)),
    );
    if (!route) {
      return new Response(JSON.stringify({ error: { code: 'not_found', message: `no ${path}` } }), {
        status: 404,
        headers: { 'Content-Type': 'application/json' },
      });
    }
    const status = route.status ?? 200;
    return new Response(status === 204 ? null : JSON.stringify(route.body ?? {}), {
      status,
      headers: { 'Content-Type': 'application/json' },
    });
  });
  vi.stubGlobal('fetch', fn);
  return { fn, calls };
}

export function renderApp(
  ui: ReactElement,
  { path = '/', authed = false }: { path?: string; authed?: boolean } = {},
) {
  const client = makeQueryClient();
  client.setDefaultOptions({ queries: { retry: false, staleTime: Infinity } });
  return render(
    <Providers client={client}>
      <MemoryRouter initialEntries={[path]}>
        <AuthProvider>{authed ? <RequireAuth>{ui}</RequireAuth> : ui}</AuthProvider>
      </MemoryRouter>
    </Providers>,
  );
}

export const SESSION = {
  id: 1,
  username: 'maria',
  role: 'operator',
  tenant_id: 1,
  tenant: 'acme',
  csrf_token: 'csrf-123',
};
