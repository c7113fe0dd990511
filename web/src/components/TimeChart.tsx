import { useEffect, useRef } from 'react';
import { Box } from '@chakra-ui/react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { useColorMode } from '../lib/colorMode';

/** Seconds since the epoch, then avg, min and max per point (null: no data). */
export type ChartData = [number[], (number | null)[], (number | null)[], (number | null)[]];

/** One metric over time: the average line and a min/max band (uPlot, canvas). */
export function TimeChart({
  title,
  data,
  height = 220,
}: {
  title: string;
  data: ChartData;
  height?: number;
}) {
  const container = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const { mode } = useColorMode();

  useEffect(() => {
    const element = container.current;
    if (!element) return;
    const axis = mode === 'dark' ? '#a1a1aa' : '#52525b';
    const grid = mode === 'dark' ? 'rgba(255,255,255,0.08)' : 'rgba(0,0,0,0.07)';
    const line = mode === 'dark' ? '#2dd4bf' : '#0f766e';
    const options: uPlot.Options = {
      width: Math.max(element.clientWidth, 200),
      height,
      legend: { show: true, live: true },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      axes: [
        { stroke: axis, grid: { stroke: grid } },
        { stroke: axis, grid: { stroke: grid }, size: 60 },
      ],
      series: [
        {},
        { label: 'avg', stroke: line, width: 1.5, spanGaps: false },
        { label: 'min', stroke: 'transparent', points: { show: false } },
        { label: 'max', stroke: 'transparent', points: { show: false } },
      ],
      bands: [
        {
          series: [3, 2],
          fill: mode === 'dark' ? 'rgba(45,212,191,0.18)' : 'rgba(15,118,110,0.15)',
        },
      ],
    };
    const u = new uPlot(options, data as uPlot.AlignedData, element);
    plot.current = u;
    const observer = new ResizeObserver(() => {
      u.setSize({ width: Math.max(element.clientWidth, 200), height });
    });
    observer.observe(element);
    return () => {
      observer.disconnect();
      u.destroy();
      plot.current = null;
    };
    // data is applied below without recreating the chart
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [mode, height]);

  useEffect(() => {
    plot.current?.setData(data as uPlot.AlignedData);
  }, [data]);

  return (
    <Box
      ref={container}
      role="img"
      aria-label={`Chart of ${title}`}
      data-points={data[0].length}
      data-last={data[1][data[1].length - 1] ?? ''}
      w="full"
      minH={`${height}px`}
    />
  );
}
