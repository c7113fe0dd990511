import { lazy, Suspense } from 'react';
import type { ReactNode } from 'react';
import { ChakraProvider } from '@chakra-ui/react';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { BrowserRouter, Navigate, Route, Routes, useLocation } from 'react-router';
import { ApiError } from './api/client';
import { AuthProvider, useAuth } from './auth/AuthContext';
import { Layout } from './components/Layout';
import { Loading } from './components/ui';
import { SignIn } from './pages/SignIn';
import { system } from './theme';

const Overview = lazy(() => import('./pages/Overview'));
const Devices = lazy(() => import('./pages/Devices'));
const DevicePage = lazy(() => import('./pages/DevicePage'));
const Alerts = lazy(() => import('./pages/Alerts'));
const Rules = lazy(() => import('./pages/Rules'));
const RuleEditor = lazy(() => import('./pages/RuleEditor'));
const Admin = lazy(() => import('./pages/Admin'));

export function makeQueryClient(): QueryClient {
  return new QueryClient({
    defaultOptions: {
      queries: {
        staleTime: 10_000,
        refetchOnWindowFocus: false,
        retry: (count, error) =>
          count < 2 && !(error instanceof ApiError && error.status >= 400 && error.status < 500),
      },
      mutations: { retry: false },
    },
  });
}

export function RequireAuth({ children }: { children: ReactNode }) {
  const { status } = useAuth();
  const location = useLocation();
  if (status === 'loading') return <Loading label="Checking your session…" />;
  if (status === 'signed-out') {
    const next = `${location.pathname}${location.search}`;
    return (
      <Navigate
        to={next === '/' ? '/signin' : `/signin?next=${encodeURIComponent(next)}`}
        replace
      />
    );
  }
  return <>{children}</>;
}

export function AppRoutes() {
  return (
    <Routes>
      <Route path="/signin" element={<SignIn />} />
      <Route
        element={
          <RequireAuth>
            <Layout />
          </RequireAuth>
        }
      >
        <Route
          index
          element={
            <Page>
              <Overview />
            </Page>
          }
        />
        <Route
          path="devices"
          element={
            <Page>
              <Devices />
            </Page>
          }
        />
        <Route
          path="devices/:uid"
          element={
            <Page>
              <DevicePage />
            </Page>
          }
        />
        <Route
          path="alerts"
          element={
            <Page>
              <Alerts />
            </Page>
          }
        />
        <Route
          path="rules"
          element={
            <Page>
              <Rules />
            </Page>
          }
        />
        <Route
          path="rules/new"
          element={
            <Page>
              <RuleEditor />
            </Page>
          }
        />
        <Route
          path="rules/:id"
          element={
            <Page>
              <RuleEditor />
            </Page>
          }
        />
        <Route
          path="admin"
          element={
            <Page>
              <Admin />
            </Page>
          }
        />
        <Route path="*" element={<Navigate to="/" replace />} />
      </Route>
    </Routes>
  );
}

function Page({ children }: { children: ReactNode }) {
  return <Suspense fallback={<Loading />}>{children}</Suspense>;
}

export function Providers({ children, client }: { children: ReactNode; client: QueryClient }) {
  return (
    <ChakraProvider value={system}>
      <QueryClientProvider client={client}>{children}</QueryClientProvider>
    </ChakraProvider>
  );
}

const queryClient = makeQueryClient();

export default function App() {
  return (
    <Providers client={queryClient}>
      <BrowserRouter>
        <AuthProvider>
          <AppRoutes />
        </AuthProvider>
      </BrowserRouter>
    </Providers>
  );
}
