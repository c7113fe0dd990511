import { useEffect, useRef, useState } from 'react';
import { request } from '../api/client';

export interface ReadingsFrame {
  type: 'readings';
  device: string;
  points: { metric: string; ts: string; value: number | string | null }[];
}
export interface StatusFrame {
  type: 'status';
  device: string;
  online: boolean;
  last_seen: string | null;
}
export interface AlertFrame {
  type: 'alert';
  event: string;
  alert: Record<string, unknown>;
}
export interface GapFrame {
  type: 'gap';
  dropped: number | null;
  reason: string;
}
export type LiveFrame = ReadingsFrame | StatusFrame | AlertFrame | GapFrame;

export type LiveState = 'connecting' | 'open' | 'paused' | 'closed';

export function liveUrl(options: { devices?: string[]; metrics?: string[]; types: string[] }) {
  const params = new URLSearchParams();
  if (options.devices?.length) params.set('devices', options.devices.join(','));
  if (options.metrics?.length) params.set('metrics', options.metrics.join(','));
  params.set('types', options.types.join(','));
  return `/api/v1/live?${params.toString()}`;
}

/** Follow the live stream (SSE, cookie auth) while `enabled`; each frame goes to `onFrame`. */
export function useLive(
  options: { devices?: string[]; metrics?: string[]; types: string[]; enabled?: boolean },
  onFrame: (frame: LiveFrame) => void,
): LiveState {
  const enabled = options.enabled ?? true;
  const url = liveUrl(options);
  const handler = useRef(onFrame);
  useEffect(() => {
    handler.current = onFrame;
  });
  const [state, setState] = useState<LiveState>(enabled ? 'connecting' : 'paused');

  useEffect(() => {
    if (!enabled) {
      setState('paused');
      return;
    }
    if (typeof EventSource === 'undefined') {
      setState('closed');
      return;
    }
    setState('connecting');
    const source = new EventSource(url);
    const deliver = (event: MessageEvent<string>) => {
      try {
        handler.current(JSON.parse(event.data) as LiveFrame);
      } catch {
        // a frame that is not JSON: ignore it
      }
    };
    for (const type of ['readings', 'status', 'alert', 'gap']) {
      source.addEventListener(type, deliver as EventListener);
    }
    source.onmessage = deliver;
    source.onopen = () => setState('open');
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setState('closed');
        // Closed for good: maybe the session ended — /auth/me answers 401 then, which signs out.
        void request('/auth/me').catch(() => {});
      } else {
        setState('connecting');
      }
    };
    return () => source.close();
  }, [url, enabled]);

  return state;
}
