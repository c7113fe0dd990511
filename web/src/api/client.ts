// The one way the dashboard talks to the API: same-origin fetch with the session cookie,
// the CSRF header on every mutation, one error shape, and a 401 that ends the session.
import type { components } from './schema';

export type Schemas = components['schemas'];

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: unknown;

  constructor(status: number, code: string, message: string, details: unknown = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const MUTATIONS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

let csrfToken: string | null = null;
let unauthorizedHandler: ((error: ApiError) => void) | null = null;

/** The CSRF token of the cookie session (from sign-in or `GET /auth/me`). */
export function setCsrfToken(token: string | null): void {
  csrfToken = token;
}

export function getCsrfToken(): string | null {
  return csrfToken;
}

/** Called on any 401 of a request that was not told to expect one (the session ended). */
export function onUnauthorized(handler: ((error: ApiError) => void) | null): void {
  unauthorizedHandler = handler;
}

export type QueryValue =
  string | number | boolean | null | undefined | readonly (string | number)[];

/** `?a=1&b=x&b=y`: arrays repeat their key; null, undefined and '' are left out. */
export function queryString(query: Record<string, QueryValue> | undefined): string {
  if (!query) return '';
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === null || value === undefined || value === '') continue;
    if (Array.isArray(value)) {
      for (const item of value as readonly (string | number)[]) params.append(key, String(item));
    } else {
      params.append(key, String(value));
    }
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  query?: Record<string, QueryValue>;
  signal?: AbortSignal;
  /** A 401 is an answer here (sign-in, the first `/auth/me`), not an expired session. */
  expectUnauthorized?: boolean;
}

/** The message of an error answer (`{"error": {code, message, details}}`), whatever its shape. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  let code = `http_${response.status}`;
  let message = response.statusText || `request failed (${response.status})`;
  let details: unknown = null;
  try {
    const body: unknown = await response.json();
    if (body && typeof body === 'object') {
      const record = body as Record<string, unknown>;
      const error = record.error ?? record.detail;
      if (error && typeof error === 'object' && !Array.isArray(error)) {
        const info = error as Record<string, unknown>;
        if (typeof info.code === 'string') code = info.code;
        if (typeof info.message === 'string') message = info.message;
        details = info.details ?? null;
      } else if (typeof error === 'string') {
        message = error;
      }
    }
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, code, message, details);
}

export async function request<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const method = (options.method ?? 'GET').toUpperCase();
  const headers: Record<string, string> = { Accept: 'application/json' };
  let body: string | undefined;
  if (options.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(options.body);
  }
  if (MUTATIONS.has(method) && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let response: Response;
  try {
    response = await fetch(`/api/v1${path}${queryString(options.query)}`, {
      method,
      headers,
      body,
      credentials: 'same-origin',
      signal: options.signal,
    });
  } catch (error) {
    if (error instanceof DOMException && error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', 'The server cannot be reached — check your connection.');
  }
  if (!response.ok) {
    const error = await errorFromResponse(response);
    if (response.status === 401 && !options.expectUnauthorized) unauthorizedHandler?.(error);
    throw error;
  }
  if (response.status === 204) return undefined as T;
  const type = response.headers.get('Content-Type') ?? '';
  if (!type.includes('json')) return (await response.text()) as T;
  return (await response.json()) as T;
}

export const api = {
  get: <T>(path: string, query?: Record<string, QueryValue>, signal?: AbortSignal) =>
    request<T>(path, { query, signal }),
  post: <T>(path: string, body?: unknown, query?: Record<string, QueryValue>) =>
    request<T>(path, { method: 'POST', body, query }),
  patch: <T>(path: string, body: unknown) => request<T>(path, { method: 'PATCH', body }),
  put: <T>(path: string, body: unknown) => request<T>(path, { method: 'PUT', body }),
  delete: <T = void>(path: string, query?: Record<string, QueryValue>) =>
    request<T>(path, { method: 'DELETE', query }),
};

/** A path segment from a user- or device-set name. */
export function seg(value: string | number): string {
  return encodeURIComponent(String(value));
}

export function errorMessage(error: unknown): string {
  if (error instanceof ApiError) {
    const fields = Array.isArray(error.details)
      ? (error.details as unknown[])
          .map((d) => {
            if (!d || typeof d !== 'object') return null;
            const r = d as Record<string, unknown>;
            return typeof r.field === 'string' && typeof r.problem === 'string'
              ? `${r.field}: ${r.problem}`
              : null;
          })
          .filter((x): x is string => x !== null)
      : [];
    return fields.length && !fields.some((f) => error.message.includes(f))
      ? `${error.message} (${fields.join('; ')})`
      : error.message;
  }
  if (error instanceof Error) return error.message;
  return String(error);
}
