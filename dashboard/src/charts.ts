// Time-series charts with uPlot (about 50 KB minified, canvas, fast with thousands of points:
// docs/decisions.md). Each chart has a data table beside it for screen readers and for anyone
// who wants the exact figures.
import uPlot from 'uplot';

export interface Line {
  label: string;
  values: Array<number | null>;
  color: string;
  dash?: number[];
  axis: 'left' | 'right';
}

export interface ChartSpec {
  /** The buckets' positions (0, 1, 2...: uPlot's x). */
  times: number[];
  lines: Line[];
  left: (value: number) => string;
  right?: (value: number) => string;
  /** A bucket's label in the tooltip legend. */
  when: (time: number) => string;
}

const charts = new WeakMap<HTMLElement, { plot: uPlot; observer: ResizeObserver }>();

export function drawChart(host: HTMLElement, spec: ChartSpec, label: string): void {
  destroyChart(host);
  host.replaceChildren();
  const canvasHost = document.createElement('div');
  canvasHost.className = 'chart';
  canvasHost.setAttribute('role', 'img');
  canvasHost.setAttribute('aria-label', label);
  host.append(canvasHost);
  const width = Math.max(280, host.clientWidth || 600);
  const options: uPlot.Options = {
    width,
    height: width < 500 ? 220 : 280,
    legend: { show: true, live: true },
    cursor: { drag: { x: false, y: false } },
    // x is the bucket's index: labels are the API's own bucket names (dates in the chosen zone),
    // so no browser time zone can shift them.
    scales: { x: { time: false }, left: {}, right: {} },
    axes: [
      {
        stroke: '#4a5568',
        grid: { stroke: '#e2e8f0' },
        ticks: { stroke: '#cbd5e0' },
        space: 70,
        values: (_u, ticks) => ticks.map((t) => (Number.isInteger(t) ? spec.when(t) : '')),
      },
      {
        scale: 'left',
        stroke: '#4a5568',
        grid: { stroke: '#e2e8f0' },
        size: 70,
        values: (_u, ticks) => ticks.map((t) => spec.left(t)),
      },
      ...(spec.right
        ? [
            {
              scale: 'right',
              side: 1,
              stroke: '#4a5568',
              grid: { show: false },
              size: 50,
              values: (_u: uPlot, ticks: number[]) => ticks.map((t) => spec.right!(t)),
            } as uPlot.Axis,
          ]
        : []),
    ],
    series: [
      { label: 'When', value: (_u, t) => (t == null ? '' : spec.when(t)) },
      ...spec.lines.map(
        (line): uPlot.Series => ({
          label: line.label,
          scale: line.axis,
          stroke: line.color,
          width: 2,
          dash: line.dash,
          points: { show: spec.times.length < 40 },
          value: (_u, v) => (v == null ? '–' : line.axis === 'left' ? spec.left(v) : (spec.right ?? String)(v)),
        }),
      ),
    ],
  };
  const data = [spec.times, ...spec.lines.map((l) => l.values)] as uPlot.AlignedData;
  const plot = new uPlot(options, data, canvasHost);
  // Follow the panel's width (phone rotation, window resize).
  const observer = new ResizeObserver(() => {
    const next = Math.max(280, host.clientWidth);
    if (Math.abs(next - plot.width) > 4) plot.setSize({ width: next, height: next < 500 ? 220 : 280 });
  });
  observer.observe(host);
  charts.set(host, { plot, observer });
}

export function destroyChart(host: HTMLElement): void {
  const found = charts.get(host);
  if (found) {
    found.observer.disconnect();
    found.plot.destroy();
    charts.delete(host);
  }
}
