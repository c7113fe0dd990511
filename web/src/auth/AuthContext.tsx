import { createContext, useCallback, useContext, useEffect, useMemo, useState } from 'react';
import type { ReactNode } from 'react';
import { useLocation, useNavigate } from 'react-router';
import { useQueryClient } from '@tanstack/react-query';
import { ApiError, onUnauthorized, request, setCsrfToken } from '../api/client';
import type { Me, Role, Session } from '../api/types';

export const EXPIRED_MESSAGE = 'Your session expired — sign in again';

interface AuthState {
  status: 'loading' | 'signed-in' | 'signed-out';
  session: Session | null;
  /** Why the sign-in page is shown (an expired session), if not on purpose. */
  notice: string | null;
  signIn: (username: string, password: string) => Promise<Session>;
  signOut: () => Promise<void>;
}

const AuthContext = createContext<AuthState | null>(null);

/** Where to go after signing in: a path of this app only (never another origin). */
export function safeNext(next: string | null | undefined): string {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/';
  if (next.startsWith('/signin')) return '/';
  return next;
}

/** The session a `GET /auth/me` answer describes (after a reload): who, their role and
 *  tenant (by name, as the user menu shows it) and the cookie session's CSRF token. */
export function sessionFromMe(me: Me): Session {
  return {
    username: me.username,
    role: me.role as Role,
    tenant_id: me.tenant_id,
    tenant: me.tenant,
    csrf_token: me.csrf_token ?? null,
  };
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [status, setStatus] = useState<AuthState['status']>('loading');
  const [session, setSession] = useState<Session | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const navigate = useNavigate();
  const location = useLocation();
  const queryClient = useQueryClient();

  // Who is signed in after a (re)load: the cookie session, if any, and its CSRF token.
  useEffect(() => {
    let cancelled = false;
    request<Me>('/auth/me', { expectUnauthorized: true })
      .then((me) => {
        if (cancelled) return;
        setCsrfToken(me.csrf_token ?? null);
        setSession(sessionFromMe(me));
        setStatus('signed-in');
      })
      .catch(() => {
        if (cancelled) return;
        setStatus('signed-out');
      });
    return () => {
      cancelled = true;
    };
  }, []);

  // A 401 anywhere: the session expired. Back to sign-in, keeping where the user was.
  const here = `${location.pathname}${location.search}`;
  useEffect(() => {
    onUnauthorized((error: ApiError) => {
      void error;
      setCsrfToken(null);
      setSession(null);
      setStatus('signed-out');
      setNotice(EXPIRED_MESSAGE);
      queryClient.clear();
      if (!here.startsWith('/signin')) {
        navigate(`/signin?next=${encodeURIComponent(here)}`, { replace: true });
      }
    });
    return () => onUnauthorized(null);
  }, [navigate, queryClient, here]);

  const signIn = useCallback(async (username: string, password: string) => {
    const answer = await request<Session>('/auth/session', {
      method: 'POST',
      body: { username, password },
      expectUnauthorized: true,
    });
    setCsrfToken(answer.csrf_token ?? null);
    setSession(answer);
    setNotice(null);
    setStatus('signed-in');
    return answer;
  }, []);

  const signOut = useCallback(async () => {
    try {
      await request<void>('/auth/session', { method: 'DELETE', expectUnauthorized: true });
    } catch {
      // signed out either way
    }
    setCsrfToken(null);
    setSession(null);
    setNotice(null);
    setStatus('signed-out');
    queryClient.clear();
    navigate('/signin', { replace: true });
  }, [navigate, queryClient]);

  const value = useMemo(
    () => ({ status, session, notice, signIn, signOut }),
    [status, session, notice, signIn, signOut],
  );
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthState {
  const state = useContext(AuthContext);
  if (!state) throw new Error('useAuth outside AuthProvider');
  return state;
}

/** The signed-in session (inside RequireAuth). */
export function useSession(): Session {
  const { session } = useAuth();
  if (!session) throw new Error('useSession without a session');
  return session;
}
