import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { Route, Routes, useLocation } from 'react-router';
import { api, getCsrfToken, setCsrfToken } from '../api/client';
import { Layout } from '../components/Layout';
import { SignIn } from '../pages/SignIn';
import { EXPIRED_MESSAGE, safeNext } from './AuthContext';
import { SESSION, mockFetch, renderApp } from '../test/utils';

function Where() {
  const location = useLocation();
  return <p data-testid="where">{`${location.pathname}${location.search}`}</p>;
}

function Expire() {
  return (
    <button type="button" onClick={() => void api.get('/alerts').catch(() => {})}>
      load
    </button>
  );
}

describe('sign-in and session', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    setCsrfToken(null);
  });

  it('signs in with a cookie session, keeps its CSRF token and goes where the user was', async () => {
    const { calls } = mockFetch([
      {
        path: '/api/v1/auth/me',
        status: 401,
        body: { error: { code: 'unauthorized', message: 'no' } },
      },
      { method: 'POST', path: '/api/v1/auth/session', body: SESSION },
    ]);
    renderApp(
      <Routes>
        <Route path="/signin" element={<SignIn />} />
        <Route path="*" element={<Where />} />
      </Routes>,
      { path: '/signin?next=%2Fdevices%2Fd1' },
    );
    await userEvent.type(await screen.findByLabelText(/username/i), 'maria');
    await userEvent.type(screen.getByLabelText(/password/i), 'secret');
    await userEvent.click(screen.getByRole('button', { name: /sign in/i }));
    expect(await screen.findByTestId('where')).toHaveTextContent('/devices/d1');
    const post = calls.find((c) => c.method === 'POST');
    expect(post?.body).toEqual({ username: 'maria', password: 'secret' });
    expect(getCsrfToken()).toBe('csrf-123');
  });

  it('shows the error message of a refused sign-in', async () => {
    mockFetch([
      { path: '/api/v1/auth/me', status: 401, body: {} },
      {
        method: 'POST',
        path: '/api/v1/auth/session',
        status: 401,
        body: { error: { code: 'unauthorized', message: 'wrong username or password' } },
      },
    ]);
    renderApp(<SignIn />, { path: '/signin' });
    await userEvent.type(await screen.findByLabelText(/username/i), 'maria');
    await userEvent.type(screen.getByLabelText(/password/i), 'nope');
    await userEvent.click(screen.getByRole('button', { name: /sign in/i }));
    expect(await screen.findByText('wrong username or password')).toBeInTheDocument();
  });

  it('on a 401 goes to sign-in with a message, remembering the page', async () => {
    mockFetch([
      { path: '/api/v1/auth/me', body: SESSION },
      {
        path: '/api/v1/alerts',
        status: 401,
        body: { error: { code: 'unauthorized', message: 'x' } },
      },
    ]);
    renderApp(
      <Routes>
        <Route path="/signin" element={<SignIn />} />
        <Route path="/alerts" element={<Expire />} />
      </Routes>,
      { path: '/alerts?state=firing' },
    );
    await waitFor(() => expect(getCsrfToken()).toBe('csrf-123'));
    await userEvent.click(screen.getByRole('button', { name: 'load' }));
    expect(await screen.findByText(EXPIRED_MESSAGE)).toBeInTheDocument();
    expect(getCsrfToken()).toBeNull();
  });

  it('shows the tenant in the user menu after a reload (from /auth/me)', async () => {
    mockFetch([{ path: '/api/v1/auth/me', body: { ...SESSION, tenant: 'acme-labs' } }]);
    renderApp(
      <Routes>
        <Route element={<Layout />}>
          <Route path="/" element={<p>home</p>} />
        </Route>
      </Routes>,
      { path: '/', authed: true },
    );
    await userEvent.click(await screen.findByRole('button', { name: /user menu for maria/i }));
    expect(await screen.findByText('operator · acme-labs')).toBeInTheDocument();
  });

  it('never returns to another origin after sign-in', () => {
    expect(safeNext('//evil.example')).toBe('/');
    expect(safeNext('https://evil.example')).toBe('/');
    expect(safeNext('/devices?q=a')).toBe('/devices?q=a');
    expect(safeNext(null)).toBe('/');
  });
});
