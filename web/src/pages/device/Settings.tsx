import { useState } from 'react';
import type { FormEvent } from 'react';
import {
  Alert,
  Box,
  Button,
  Code,
  Field,
  Heading,
  HStack,
  Input,
  SimpleGrid,
  Stack,
  Text,
  Textarea,
} from '@chakra-ui/react';
import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api, seg } from '../../api/client';
import type { CertificateOut, Device, TokenOut } from '../../api/types';
import { ErrorBox, SelectField } from '../../components/ui';

function parseMetadata(text: string): {
  value: Record<string, unknown> | null;
  error: string | null;
} {
  try {
    const value: unknown = JSON.parse(text || '{}');
    if (!value || typeof value !== 'object' || Array.isArray(value)) {
      return {
        value: null,
        error: 'Metadata must be a JSON object, such as {"tags": ["cold-room"]}',
      };
    }
    return { value: value as Record<string, unknown>, error: null };
  } catch (e) {
    return { value: null, error: `Not valid JSON: ${(e as Error).message}` };
  }
}

export function MetadataForm({ device }: { device: Device }) {
  const queryClient = useQueryClient();
  const [name, setName] = useState(device.name ?? '');
  const [type, setType] = useState(device.type ?? '');
  const [timezone, setTimezone] = useState(device.timezone ?? '');
  const [status, setStatus] = useState(device.status);
  const [metadata, setMetadata] = useState(JSON.stringify(device.metadata ?? {}, null, 2));
  const parsed = parseMetadata(metadata);
  const save = useMutation({
    mutationFn: () =>
      api.patch<Device>(`/devices/${seg(device.uid)}`, {
        name: name || null,
        type: type || null,
        timezone: timezone || null,
        status,
        metadata: parsed.value,
      }),
    onSuccess: (saved) => {
      queryClient.setQueryData(['device', device.uid], saved);
      void queryClient.invalidateQueries({ queryKey: ['devices'] });
    },
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    if (!parsed.error) save.mutate();
  }
  return (
    <form onSubmit={submit}>
      <Stack gap={3} maxW="2xl">
        <Heading as="h3" size="sm">
          Details and metadata
        </Heading>
        <SimpleGrid columns={{ base: 1, md: 2 }} gap={3}>
          <Field.Root>
            <Field.Label>Name</Field.Label>
            <Input size="sm" value={name} onChange={(e) => setName(e.currentTarget.value)} />
          </Field.Root>
          <Field.Root>
            <Field.Label>Type</Field.Label>
            <Input size="sm" value={type} onChange={(e) => setType(e.currentTarget.value)} />
          </Field.Root>
          <Field.Root>
            <Field.Label>Time zone</Field.Label>
            <Input
              size="sm"
              value={timezone}
              placeholder="Europe/Berlin"
              onChange={(e) => setTimezone(e.currentTarget.value)}
            />
          </Field.Root>
          <SelectField
            label="Status"
            value={status}
            onChange={setStatus}
            options={['active', 'disabled']}
          />
        </SimpleGrid>
        <Field.Root invalid={!!parsed.error}>
          <Field.Label>Metadata (JSON: tags, location, expected_interval …)</Field.Label>
          <Textarea
            fontFamily="mono"
            fontSize="sm"
            rows={8}
            value={metadata}
            onChange={(e) => setMetadata(e.currentTarget.value)}
          />
          {parsed.error && <Field.ErrorText>{parsed.error}</Field.ErrorText>}
        </Field.Root>
        <ErrorBox error={save.error} />
        {save.isSuccess && !save.isPending && <Text color="green.fg">Saved.</Text>}
        <Box>
          <Button
            type="submit"
            size="sm"
            colorPalette="teal"
            loading={save.isPending}
            disabled={!!parsed.error}
          >
            Save changes
          </Button>
        </Box>
      </Stack>
    </form>
  );
}

function download(filename: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/x-pem-file' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function Credentials({ uid }: { uid: string }) {
  const [confirming, setConfirming] = useState(false);
  const [copied, setCopied] = useState(false);
  const rotate = useMutation({
    mutationFn: () => api.post<TokenOut>(`/devices/${seg(uid)}/token`),
    onSuccess: () => setConfirming(false),
  });
  const certificate = useMutation({
    mutationFn: () => api.post<CertificateOut>(`/devices/${seg(uid)}/certificate`),
  });
  return (
    <Stack gap={4} maxW="2xl" mt={8}>
      <Heading as="h3" size="sm">
        Credentials
      </Heading>
      <Box>
        {!confirming ? (
          <Button
            size="sm"
            variant="outline"
            colorPalette="orange"
            onClick={() => setConfirming(true)}
          >
            Rotate token…
          </Button>
        ) : (
          <Alert.Root status="warning" flexWrap="wrap">
            <Alert.Indicator />
            <Alert.Title>The device’s current token stops working at once.</Alert.Title>
            <HStack ml="auto">
              <Button
                size="sm"
                colorPalette="orange"
                loading={rotate.isPending}
                onClick={() => rotate.mutate()}
              >
                Rotate now
              </Button>
              <Button size="sm" variant="ghost" onClick={() => setConfirming(false)}>
                Cancel
              </Button>
            </HStack>
          </Alert.Root>
        )}
        <ErrorBox error={rotate.error} />
        {rotate.data && (
          <Alert.Root status="info" mt={3} flexDirection="column" alignItems="stretch">
            <Alert.Title>New token — shown only this once; copy it to the device now</Alert.Title>
            <Code p={2} my={2} wordBreak="break-all" data-testid="new-token">
              {rotate.data.token}
            </Code>
            {rotate.data.broker && <Text fontSize="sm">{`Broker: ${rotate.data.broker}`}</Text>}
            <HStack>
              <Button
                size="xs"
                onClick={() =>
                  void navigator.clipboard?.writeText(rotate.data.token).then(() => setCopied(true))
                }
              >
                {copied ? 'Copied' : 'Copy token'}
              </Button>
              <Button size="xs" variant="ghost" onClick={() => rotate.reset()}>
                Done, hide it
              </Button>
            </HStack>
          </Alert.Root>
        )}
      </Box>
      <Box>
        <Button
          size="sm"
          variant="outline"
          loading={certificate.isPending}
          onClick={() => certificate.mutate()}
        >
          Issue a client certificate (mTLS)
        </Button>
        <ErrorBox error={certificate.error} />
        {certificate.data && (
          <Alert.Root status="info" mt={3} flexDirection="column" alignItems="stretch">
            <Alert.Title>Certificate issued — the private key is shown only this once</Alert.Title>
            <HStack mt={2} wrap="wrap">
              <Button
                size="xs"
                onClick={() => download(`${uid}.crt`, certificate.data.certificate)}
              >
                Certificate
              </Button>
              <Button
                size="xs"
                onClick={() => download(`${uid}.key`, certificate.data.private_key)}
              >
                Private key
              </Button>
              <Button size="xs" onClick={() => download('ca.crt', certificate.data.ca_certificate)}>
                CA certificate
              </Button>
              <Button size="xs" variant="ghost" onClick={() => certificate.reset()}>
                Done, forget them
              </Button>
            </HStack>
          </Alert.Root>
        )}
      </Box>
    </Stack>
  );
}
