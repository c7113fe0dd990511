import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError, api, errorMessage, onUnauthorized, queryString, setCsrfToken } from './client';
import { mockFetch } from '../test/utils';

describe('api client', () => {
  beforeEach(() => setCsrfToken(null));
  afterEach(() => {
    onUnauthorized(null);
    vi.unstubAllGlobals();
  });

  it('sends the CSRF token on mutations, never on reads', async () => {
    const { calls } = mockFetch([
      { path: '/api/v1/devices', body: { items: [], next_offset: null } },
      { method: 'PATCH', path: '/api/v1/devices/d1', body: { uid: 'd1' } },
      { method: 'DELETE', path: '/api/v1/rules/3', status: 204 },
    ]);
    setCsrfToken('tok-1');
    await api.get('/devices');
    await api.patch('/devices/d1', { name: 'x' });
    await api.delete('/rules/3');
    expect(calls[0]?.headers['X-CSRF-Token']).toBeUndefined();
    expect(calls[1]?.headers['X-CSRF-Token']).toBe('tok-1');
    expect(calls[1]?.headers['Content-Type']).toBe('application/json');
    expect(calls[1]?.body).toEqual({ name: 'x' });
    expect(calls[2]?.headers['X-CSRF-Token']).toBe('tok-1');
  });

  it('turns the error shape into an ApiError with its message', async () => {
    mockFetch([
      {
        method: 'POST',
        path: '/api/v1/rules',
        status: 422,
        body: {
          error: {
            code: 'invalid_request',
            message: 'invalid rule',
            details: [{ field: 'body.condition.op', problem: 'expected >' }],
          },
        },
      },
    ]);
    const error = await api.post('/rules', {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(422);
    expect((error as ApiError).code).toBe('invalid_request');
    expect(errorMessage(error)).toBe('invalid rule (body.condition.op: expected >)');
  });

  it('reports a 401 to the session handler', async () => {
    mockFetch([
      {
        path: '/api/v1/alerts',
        status: 401,
        body: { error: { code: 'unauthorized', message: 'expired' } },
      },
    ]);
    const handler = vi.fn();
    onUnauthorized(handler);
    await expect(api.get('/alerts')).rejects.toMatchObject({ status: 401 });
    expect(handler).toHaveBeenCalledTimes(1);
  });

  it('builds query strings with repeated keys and without empty values', () => {
    expect(queryString({ metric: ['a', 'b'], from: '-24h', q: '', x: null })).toBe(
      '?metric=a&metric=b&from=-24h',
    );
    expect(queryString({})).toBe('');
  });

  it('says when the server cannot be reached', async () => {
    vi.stubGlobal('fetch', vi.fn().mockRejectedValue(new TypeError('Failed to fetch')));
    await expect(api.get('/devices')).rejects.toMatchObject({ code: 'network' });
  });
});
