import { useState } from 'react';
import type { FormEvent } from 'react';
import { Alert, Box, Button, Card, Field, Heading, Input, Stack } from '@chakra-ui/react';
import { Navigate, useNavigate, useSearchParams } from 'react-router';
import { safeNext, useAuth } from '../auth/AuthContext';
import { ErrorBox } from '../components/ui';
import { ColorModeToggle } from '../components/Layout';

export function SignIn() {
  const { status, notice, signIn } = useAuth();
  const [params] = useSearchParams();
  const navigate = useNavigate();
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const next = safeNext(params.get('next'));

  if (status === 'signed-in' && !busy) return <Navigate to={next} replace />;

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(username, password);
      navigate(next, { replace: true });
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return (
    <Box
      minH="100vh"
      display="flex"
      alignItems="center"
      justifyContent="center"
      p={4}
      bg="bg.muted"
    >
      <Box position="fixed" top={2} right={2}>
        <ColorModeToggle />
      </Box>
      <Card.Root as="main" w="full" maxW="sm">
        <Card.Header>
          <Heading as="h1" size="lg">
            Sign in to Telemetra
          </Heading>
        </Card.Header>
        <Card.Body>
          {notice && (
            <Alert.Root status="warning" mb={4}>
              <Alert.Indicator />
              <Alert.Title>{notice}</Alert.Title>
            </Alert.Root>
          )}
          <form onSubmit={submit} noValidate>
            <Stack gap={4}>
              <Field.Root required>
                <Field.Label>Username</Field.Label>
                <Input
                  name="username"
                  autoComplete="username"
                  value={username}
                  onChange={(e) => setUsername(e.currentTarget.value)}
                  autoFocus
                />
              </Field.Root>
              <Field.Root required>
                <Field.Label>Password</Field.Label>
                <Input
                  name="password"
                  type="password"
                  autoComplete="current-password"
                  value={password}
                  onChange={(e) => setPassword(e.currentTarget.value)}
                />
              </Field.Root>
              <ErrorBox error={error} />
              <Button
                type="submit"
                colorPalette="teal"
                loading={busy}
                disabled={!username || !password}
              >
                Sign in
              </Button>
            </Stack>
          </form>
        </Card.Body>
      </Card.Root>
    </Box>
  );
}
