import { useCallback, useSyncExternalStore } from 'react';

export type ColorMode = 'light' | 'dark';
const KEY = 'telemetra.colorMode';
const listeners = new Set<() => void>();

function preferred(): ColorMode {
  try {
    const stored = localStorage.getItem(KEY);
    if (stored === 'light' || stored === 'dark') return stored;
  } catch {
    // storage unavailable
  }
  return typeof matchMedia === 'function' && matchMedia('(prefers-color-scheme: dark)').matches
    ? 'dark'
    : 'light';
}

let current: ColorMode = typeof window === 'undefined' ? 'light' : preferred();

/** Chakra's `_dark` styles follow the `dark` class on <html>. */
export function applyColorMode(mode: ColorMode = current): void {
  current = mode;
  const root = document.documentElement;
  root.classList.toggle('dark', mode === 'dark');
  root.classList.toggle('light', mode === 'light');
  root.style.colorScheme = mode;
}

export function setColorMode(mode: ColorMode): void {
  try {
    localStorage.setItem(KEY, mode);
  } catch {
    // storage unavailable
  }
  applyColorMode(mode);
  listeners.forEach((listener) => listener());
}

export function useColorMode(): { mode: ColorMode; toggle: () => void } {
  const mode = useSyncExternalStore(
    (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    () => current,
  );
  const toggle = useCallback(() => setColorMode(mode === 'dark' ? 'light' : 'dark'), [mode]);
  return { mode, toggle };
}
