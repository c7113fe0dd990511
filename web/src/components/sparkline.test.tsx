import { describe, expect, it } from 'vitest';
import { render, screen } from '@testing-library/react';
import { Sparkline, sparklinePoints, sparklineSummary } from './Sparkline';

const H = (h: number) => `2026-11-22T${String(h).padStart(2, '0')}:00:00Z`;

describe('sparkline', () => {
  it('places points by time and value inside the box, highest value on top', () => {
    const coords = sparklinePoints(
      [
        [H(0), 10],
        [H(1), 20],
        [H(4), 15],
      ],
      100,
      20,
      0,
    );
    expect(coords).toBe('0,20 25,0 100,10'); // hour 1 of 0–4 is a quarter across; a gap stays
  });

  it('draws a flat line for equal values and nothing for no data', () => {
    expect(
      sparklinePoints(
        [
          [H(0), 5],
          [H(1), 5],
        ],
        10,
        10,
        0,
      ),
    ).toBe('0,5 10,5');
    expect(sparklinePoints([], 10, 10)).toBe('');
    expect(sparklinePoints([['not a time', 1]], 10, 10)).toBe('');
  });

  it('is an SVG polyline with a text alternative', () => {
    const points = [
      [H(8), 18.25],
      [H(9), 21.5],
      [H(10), 20],
    ] as const;
    const { container } = render(<Sparkline metric="temperature" points={points} />);
    const img = screen.getByRole('img', {
      name: 'temperature, last 24 h: 18.25 to 21.5, latest hour 20',
    });
    expect(img.tagName.toLowerCase()).toBe('svg');
    const line = container.querySelector('polyline');
    expect(line?.getAttribute('points')?.split(' ')).toHaveLength(3);
    expect(container.querySelector('title')?.textContent).toBe(img.getAttribute('aria-label'));
  });

  it('shows one hour as a dot and names the metric as text, never as markup', () => {
    const evil = '<img src=x onerror=alert(1)>';
    const { container } = render(<Sparkline metric={evil} points={[[H(3), 1]]} hours={6} />);
    expect(container.querySelector('circle')).not.toBeNull();
    expect(container.querySelector('img')).toBeNull();
    expect(screen.getByRole('img').getAttribute('aria-label')).toBe(
      `${evil}, last 6 h: 1 to 1, latest hour 1`,
    );
    expect(sparklineSummary('t', [])).toBe('t: no data in the last 24 h');
  });
});
