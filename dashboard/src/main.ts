// The dashboard: one page, every figure read from the public read API with the key the user
// entered. Each panel loads on its own (skeleton, then figures or its own error); the filters
// live in the URL (history.pushState, popstate).
import { Api, ApiError, type ApiErrorBody } from './api';
import { drawChart } from './charts';
import { $, el, table, type Cell } from './dom';
import { count, growth, money, moneyShort, percent, ratioPercent } from './format';
import {
  CURRENCIES,
  GRANULARITIES,
  PERIODS,
  browserZone,
  defaultGranularity,
  doubledPeriod,
  forgetKey,
  readState,
  stateSearch,
  storeKey,
  storedKey,
  type State,
} from './state';

// ------------------------------------------------------------------ API shapes (proto3 JSON:
// a zero or empty field may be absent, so every read has a default)

interface SalesBucket { date?: string; revenue?: number; orders?: number }
interface Sales {
  revenue?: number;
  orders?: number;
  averageOrderValue?: number;
  currency?: string;
  growth?: { revenue?: number; orders?: number };
  series?: SalesBucket[];
}
interface Product { productId?: string; name?: string; revenue?: number; unitsSold?: number; conversionRate?: number }
interface Customers {
  totalCustomers?: number;
  newCustomers?: number;
  returningCustomers?: number;
  repeatPurchaseRate?: number;
  revenuePerCustomer?: number;
  topCustomers?: Array<{ customerId?: string; orders?: number; revenue?: number }>;
}
interface Funnel { stages?: Array<{ name?: string; count?: number; rate?: number }>; conversionRate?: number }
interface Realtime { activeVisitors?: number; ordersToday?: number; revenueToday?: number; topPages?: Array<{ page?: string; visitors?: number }> }
type Row = Record<string, string | number>;

const REALTIME_EVERY_MS = 5000;
// Enough for a year of days (or a day of hours) in time order; the table scrolls.
const EXPLORER_ROWS = 1000;
const MONEY_METRICS = new Set(['revenue', 'aov']);
const TIME_DIMENSIONS = new Set(['date', 'week', 'month', 'hour']);
// Used only when the server's catalogue cannot be read (an older server): docs/query.md's list.
const FALLBACK_METRICS = ['revenue', 'orders', 'aov', 'units_sold', 'visitors', 'sessions', 'page_views', 'product_views', 'add_to_carts', 'checkouts', 'events', 'conversion_rate'];
const FALLBACK_DIMENSIONS = ['date', 'week', 'month', 'hour', 'event', 'currency', 'product_id', 'product_category', 'page', 'referrer_host', 'utm_source', 'utm_medium', 'utm_campaign', 'country', 'region', 'device', 'browser'];

// ------------------------------------------------------------------ page state

let state: State = readState(location.search);
let api: Api | null = null;
let generation = 0; // bumped on every filter change: answers of an older one are dropped
let controller = new AbortController();
let realtimeTimer: number | undefined;
let catalogue: Promise<{ metrics: string[]; dimensions: string[] }> | null = null;
let explorerChoice = { metrics: ['revenue', 'orders'], dimensions: ['date'] };

function panel(name: string): HTMLElement {
  return $(`[data-panel="${name}"]`);
}

function loading(section: HTMLElement): void {
  section.dataset.state = 'loading';
  section.setAttribute('aria-busy', 'true');
  const error = $('.panel-error', section);
  error.hidden = true;
  error.textContent = '';
}

function ready(section: HTMLElement): void {
  section.dataset.state = 'ready';
  // Which filters the figures are for: the end-to-end test waits for the current ones.
  section.dataset.filters = stateSearch(state);
  section.removeAttribute('aria-busy');
}

function failed(section: HTMLElement, error: unknown): void {
  if (error instanceof DOMException && error.name === 'AbortError') return;
  section.dataset.state = 'error';
  section.dataset.filters = stateSearch(state);
  section.removeAttribute('aria-busy');
  const box = $('.panel-error', section);
  box.textContent = `Could not load: ${error instanceof Error ? error.message : String(error)}`;
  box.hidden = false;
  // The figures go (they would be the previous filters'); controls stay, so the user can
  // change what failed: the explorer keeps its form, the export panel its buttons.
  const results = section.querySelector<HTMLElement>('.results');
  const body = section.querySelector<HTMLElement>('.panel-body');
  if (results) results.replaceChildren();
  else if (body && section.dataset.panel !== 'export') body.replaceChildren();
  if (error instanceof ApiError && error.badKey) badKey(error);
}

/** Run `load` for a panel: skeleton first, then its figures, or its error in plain words. */
async function load(name: string, work: (section: HTMLElement, signal: AbortSignal) => Promise<void>): Promise<void> {
  const section = panel(name);
  const mine = generation;
  loading(section);
  try {
    await work(section, controller.signal);
    if (mine === generation) ready(section);
  } catch (error) {
    if (mine === generation) failed(section, error);
  }
}

function skeleton(section: HTMLElement): void {
  const body = section.querySelector<HTMLElement>('.panel-body');
  if (body) body.replaceChildren(el('div', { class: 'skeleton block' }));
}

// ------------------------------------------------------------------ panels

function cards(sales: Promise<Sales>, visitors: Promise<number>): Promise<void> {
  return load('cards', async (section) => {
    for (const card of section.querySelectorAll<HTMLElement>('.card')) {
      $('[data-role="value"]', card).replaceChildren(el('span', { class: 'skeleton' }));
      $('[data-role="growth"]', card).textContent = '';
    }
    const [s, people] = await Promise.all([sales, visitors]);
    const currency = s.currency || state.currency;
    const revenue = s.revenue ?? 0;
    const orders = s.orders ?? 0;
    const aov = s.averageOrderValue ?? 0;
    const g = s.growth ?? {};
    // AOV's growth follows from the two growths the API gives: (1 + r) / (1 + o) - 1.
    const aovGrowth =
      g.revenue !== undefined && g.orders !== undefined && g.orders !== -100
        ? Math.round(((1 + g.revenue / 100) / (1 + g.orders / 100) - 1) * 1000) / 10
        : undefined;
    const conversion = ratioPercent(orders, people);
    fillCard('revenue', money(revenue, currency), revenue, growth(g.revenue), g.revenue);
    fillCard('orders', count(orders), orders, growth(g.orders), g.orders);
    fillCard('aov', money(aov, currency), aov, g.revenue === undefined || g.orders === undefined ? growth(undefined) : `≈ ${growth(aovGrowth)}`, aovGrowth);
    // The public API has no visitors figure for the previous period (the custom query's period
    // always ends now), so these two cannot show a growth: said, not guessed.
    fillCard('visitors', count(people), people, growth(undefined, false), undefined, 'the API has no previous visitors');
    fillCard('conversion', percent(conversion), conversion, growth(undefined, false), undefined, 'orders ÷ visitors');
  });
}

function fillCard(name: string, shown: string, raw: number, change: string, rawChange: number | undefined, note?: string): void {
  const card = $(`[data-testid="card-${name}"]`);
  const value = $('[data-role="value"]', card);
  value.textContent = shown;
  value.dataset.value = String(raw);
  const g = $('[data-role="growth"]', card);
  g.textContent = `${change} vs previous period${note ? ` (${note})` : ''}`;
  g.dataset.value = rawChange === undefined ? '' : String(rawChange);
  g.className = `growth ${rawChange === undefined ? '' : rawChange > 0 ? 'up' : rawChange < 0 ? 'down' : ''}`;
}

function bucketLabel(date: string, granularity: string): string {
  if (granularity === 'hour') return date.slice(5, 16).replace('T', ' '); // MM-DD HH:MM, as in the zone
  if (granularity === 'month') return date.slice(0, 7);
  return date;
}

function salesChart(sales: Promise<Sales>, previous: Promise<Sales> | null): Promise<void> {
  return load('sales', async (section) => {
    skeleton(section);
    const [s, p] = await Promise.all([sales, previous ?? Promise.resolve(null)]);
    const currency = s.currency || state.currency;
    const current = [...(s.series ?? [])].reverse(); // the API lists newest first
    const first = current[0]?.date ?? '';
    // The doubled period's buckets before this period's first one, aligned bucket by bucket.
    const before = p ? [...(p.series ?? [])].reverse().filter((b) => (b.date ?? '') < first) : [];
    const older = before.slice(Math.max(0, before.length - current.length));
    const offset = current.length - older.length; // the previous line ends where this one does
    const prevAt = (i: number): SalesBucket | undefined => (i - offset >= 0 ? older[i - offset] : undefined);
    const body = $('.panel-body', section);
    body.replaceChildren();
    const chartHost = el('div', { class: 'chart-host' });
    body.append(chartHost);
    const labels = current.map((b) => bucketLabel(b.date ?? '', state.granularity));
    const nothing = current.every((b) => !(b.revenue ?? 0) && !(b.orders ?? 0));
    if (nothing) body.prepend(el('p', { class: 'empty', text: 'No orders in this period and currency yet.' }));
    drawChart(
      chartHost,
      {
        times: current.map((_b, i) => i),
        lines: [
          { label: 'Revenue', values: current.map((b) => b.revenue ?? 0), color: '#2b6cb0', axis: 'left' },
          { label: 'Orders', values: current.map((b) => b.orders ?? 0), color: '#c05621', axis: 'right' },
          ...(p
            ? [
                { label: 'Revenue, previous', values: current.map((_b, i) => prevAt(i)?.revenue ?? null), color: 'rgba(43, 108, 176, 0.55)', dash: [6, 5], axis: 'left' as const },
                { label: 'Orders, previous', values: current.map((_b, i) => prevAt(i)?.orders ?? null), color: 'rgba(192, 86, 33, 0.55)', dash: [6, 5], axis: 'right' as const },
              ]
            : []),
        ],
        left: (v) => moneyShort(v, currency),
        right: (v) => (Number.isInteger(v) ? count(v) : ''),
        when: (i) => labels[i] ?? '',
      },
      `Revenue and orders by ${state.granularity}, ${current.length} buckets; the figures are in the table below`,
    );
    const rows: Cell[][] = current.map((b, i) => [
      [b.date ?? '', b.date ?? ''],
      [money(b.revenue ?? 0, currency), b.revenue ?? 0],
      [count(b.orders ?? 0), b.orders ?? 0],
      prevAt(i) ? money(prevAt(i)?.revenue ?? 0, currency) : '–',
      prevAt(i) ? count(prevAt(i)?.orders ?? 0) : '–',
    ]);
    body.append(
      el(
        'details',
        { class: 'figures' },
        el('summary', { text: 'Show the figures' }),
        table('Revenue and orders by bucket, oldest first', ['Bucket', 'Revenue', 'Orders', 'Previous revenue', 'Previous orders'], rows, 'sales-series', [false, true, true, true, true]),
      ),
    );
  });
}

function bar(fraction: number, label: string): HTMLElement {
  const width = Math.max(0, Math.min(1, fraction)) * 100;
  const outer = el('span', { class: 'bar', 'aria-hidden': 'true' });
  outer.append(el('span', { class: 'bar-fill', style: undefined }));
  (outer.firstElementChild as HTMLElement).style.width = `${width.toFixed(1)}%`;
  outer.title = label;
  return outer;
}

function products(signal: AbortSignal): Promise<void> {
  return load('products', async (section) => {
    skeleton(section);
    const answer = await api!.get<{ topSellers?: Product[] }>('/analytics/products', { period: state.period, currency: state.currency, timezone: state.timezone, limit: 10 }, signal);
    const list = answer.topSellers ?? [];
    const body = $('.panel-body', section);
    if (!list.length) {
      body.replaceChildren(el('p', { class: 'empty', text: 'No product sold in this period and currency.' }));
      return;
    }
    const top = Math.max(...list.map((p) => p.revenue ?? 0), 1);
    const rows = list.map((p): Cell[] => [
      [p.name || p.productId || '', p.productId ?? ''],
      [money(p.revenue ?? 0, state.currency), p.revenue ?? 0],
      [count(p.unitsSold ?? 0), p.unitsSold ?? 0],
      [percent(p.conversionRate ?? 0), p.conversionRate ?? 0],
    ]);
    const t = table('Top products by revenue', ['Product', 'Revenue', 'Units', 'Conversion'], rows, 'products', [false, true, true, true]);
    t.querySelectorAll('tbody tr').forEach((tr, i) => {
      const cell = tr.children[1] as HTMLElement;
      cell.append(bar((list[i].revenue ?? 0) / top, `${Math.round(((list[i].revenue ?? 0) / top) * 100)}% of the best seller`));
    });
    body.replaceChildren(t);
  });
}

function funnel(signal: AbortSignal): Promise<void> {
  return load('funnel', async (section) => {
    skeleton(section);
    const answer = await api!.get<Funnel>('/analytics/funnel', { period: state.period, timezone: state.timezone }, signal);
    const stages = answer.stages ?? [];
    const first = stages[0]?.count ?? 0;
    const list = el('ol', { class: 'funnel', 'data-testid': 'funnel' });
    stages.forEach((stage, i) => {
      const n = stage.count ?? 0;
      const rate = stage.rate ?? 0;
      const item = el(
        'li',
        { 'data-testid': 'funnel-stage' },
        el('div', { class: 'stage-head' }, el('span', { class: 'stage-name', text: stage.name ?? '' }), el('span', { class: 'num', 'data-role': 'count', 'data-value': n, text: count(n) })),
        bar(first ? n / first : 0, `${percent(first ? (n / first) * 100 : 0)} of the first step`),
      );
      if (i > 0) {
        item.prepend(
          el('p', { class: 'step-rate' }, el('span', { 'data-role': 'rate', 'data-value': rate, text: `${percent(rate)} continued` }), ` · ${percent(Math.max(0, 100 - rate))} dropped`),
        );
      }
      list.append(item);
    });
    const overall = answer.conversionRate ?? 0;
    $('.panel-body', section).replaceChildren(
      list,
      el('p', { class: 'summary' }, 'Overall conversion: ', el('strong', { 'data-testid': 'funnel-conversion', 'data-value': overall, text: percent(overall) })),
    );
  });
}

function customers(signal: AbortSignal): Promise<void> {
  return load('customers', async (section) => {
    skeleton(section);
    const c = await api!.get<Customers>('/analytics/customers', { period: state.period, currency: state.currency, timezone: state.timezone, limit: 5 }, signal);
    const total = c.totalCustomers ?? 0;
    const fresh = c.newCustomers ?? 0;
    const returning = c.returningCustomers ?? 0;
    const split = el('div', { class: 'split', 'aria-hidden': 'true' }, el('span', { class: 'split-new' }), el('span', { class: 'split-returning' }));
    (split.children[0] as HTMLElement).style.flexGrow = String(fresh || (total ? 0 : 1));
    (split.children[1] as HTMLElement).style.flexGrow = String(returning || (total ? 0 : 1));
    const figure = (label: string, testid: string, shown: string, raw: number): HTMLElement =>
      el('div', { class: 'stat' }, el('dt', { text: label }), el('dd', { 'data-testid': testid, 'data-value': raw, text: shown }));
    const stats = el(
      'dl',
      { class: 'stats' },
      figure('Customers', 'customers-total', count(total), total),
      figure('New', 'customers-new', count(fresh), fresh),
      figure('Returning', 'customers-returning', count(returning), returning),
      figure('Repeat purchase rate', 'customers-repeat', percent(c.repeatPurchaseRate ?? 0), c.repeatPurchaseRate ?? 0),
      figure('Revenue per customer', 'customers-rpc', money(c.revenuePerCustomer ?? 0, state.currency), c.revenuePerCustomer ?? 0),
    );
    const rows = (c.topCustomers ?? []).map((t): Cell[] => [
      [t.customerId ?? '', t.customerId ?? ''],
      [count(t.orders ?? 0), t.orders ?? 0],
      [money(t.revenue ?? 0, state.currency), t.revenue ?? 0],
    ]);
    $('.panel-body', section).replaceChildren(
      split,
      el('p', { class: 'legend' }, el('span', { class: 'key-box new' }), ' New ', el('span', { class: 'key-box returning' }), ' Returning'),
      stats,
      rows.length ? table('Top customers by revenue', ['Customer', 'Orders', 'Revenue'], rows, 'top-customers', [false, true, true]) : el('p', { class: 'empty', text: 'No customers in this period and currency.' }),
    );
  });
}

let realtimeRuns = 0;

function realtime(first: boolean): Promise<void> {
  const section = panel('realtime');
  const run = async (): Promise<void> => {
    const r = await api!.get<Realtime>('/analytics/realtime', { timezone: state.timezone, currency: state.currency }, controller.signal);
    const tile = (label: string, testid: string, shown: string, raw: number): HTMLElement =>
      el('div', { class: 'tile' }, el('dt', { text: label }), el('dd', { 'data-testid': testid, 'data-value': raw, text: shown }));
    const pages = r.topPages ?? [];
    realtimeRuns += 1;
    section.dataset.runs = String(realtimeRuns);
    $('.panel-body', section).replaceChildren(
      el(
        'dl',
        { class: 'tiles' },
        tile('Active visitors (5 min)', 'rt-active', count(r.activeVisitors ?? 0), r.activeVisitors ?? 0),
        tile('Orders today', 'rt-orders', count(r.ordersToday ?? 0), r.ordersToday ?? 0),
        tile('Revenue today', 'rt-revenue', money(r.revenueToday ?? 0, state.currency), r.revenueToday ?? 0),
      ),
      pages.length
        ? table('Top pages in the last 5 minutes', ['Page', 'Visitors'], pages.map((p): Cell[] => [[p.page ?? '', p.page ?? ''], [count(p.visitors ?? 0), p.visitors ?? 0]]), 'top-pages', [false, true])
        : el('p', { class: 'empty', text: 'Nobody on the shop in the last 5 minutes.' }),
      el('p', { class: 'updated', text: `Updated ${new Date().toLocaleTimeString()}, every ${REALTIME_EVERY_MS / 1000} s` }),
    );
  };
  if (first) return load('realtime', async (s) => { skeleton(s); await run(); });
  // A refresh keeps the tiles on screen; only a failure replaces them.
  const mine = generation;
  return run().then(
    () => { if (mine === generation) ready(section); },
    (error) => { if (mine === generation) failed(section, error); },
  );
}

function scheduleRealtime(): void {
  window.clearTimeout(realtimeTimer);
  realtimeTimer = window.setTimeout(async () => {
    if (!api) return;
    if (!document.hidden) await realtime(false);
    scheduleRealtime();
  }, REALTIME_EVERY_MS);
}

// ------------------------------------------------------------------ explorer

/** The catalogue: the server lists its metrics and dimensions in the ErrorInfo of a query that
 * names an unknown one (docs/query.md, "Errors"), so the explorer offers exactly what this
 * server accepts. */
function readCatalogue(): Promise<{ metrics: string[]; dimensions: string[] }> {
  catalogue ??= api!.postForError('/analytics/query', { metrics: ['?'], dimensions: ['?'] }).then((body: ApiErrorBody | null) => {
    const info = (body?.details ?? []).find((d) => d.metadata && d.metadata.validMetrics);
    const metrics = info?.metadata?.validMetrics?.split(',').filter(Boolean);
    const dimensions = info?.metadata?.validDimensions?.split(',').filter(Boolean);
    return { metrics: metrics?.length ? metrics : FALLBACK_METRICS, dimensions: dimensions?.length ? dimensions : FALLBACK_DIMENSIONS };
  });
  return catalogue;
}

function explorerForm(names: { metrics: string[]; dimensions: string[] }): HTMLFormElement {
  const form = el('form', { class: 'explorer', 'data-testid': 'explorer-form' });
  const metrics = el('fieldset', {}, el('legend', { text: 'Metrics' }));
  for (const name of names.metrics) {
    const id = `m-${name}`;
    metrics.append(
      el('span', { class: 'check' }, el('input', { type: 'checkbox', id, name: 'metric', value: name, checked: explorerChoice.metrics.includes(name) }), el('label', { for: id, text: name })),
    );
  }
  const select = (id: string, label: string, chosen: string): HTMLElement => {
    const s = el('select', { id, name: id }, el('option', { value: '', text: '(none)' }), ...names.dimensions.map((d) => el('option', { value: d, text: d, selected: d === chosen })));
    return el('span', { class: 'field' }, el('label', { for: id, text: label }), s);
  };
  form.append(
    metrics,
    el('div', { class: 'dims' }, select('dim1', 'Split by', explorerChoice.dimensions[0] ?? ''), select('dim2', 'then by', explorerChoice.dimensions[1] ?? ''), el('button', { type: 'submit', text: 'Run query', 'data-testid': 'explorer-run' })),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const chosen = data.getAll('metric').map(String);
    const dims = [String(data.get('dim1') ?? ''), String(data.get('dim2') ?? '')].filter(Boolean);
    explorerChoice = { metrics: chosen.length ? chosen : ['orders'], dimensions: [...new Set(dims)] };
    void explorer(controller.signal);
  });
  return form;
}

function explorer(signal: AbortSignal): Promise<void> {
  return load('explorer', async (section) => {
    const body = $('.panel-body', section);
    const names = await readCatalogue();
    let form = body.querySelector<HTMLFormElement>('form.explorer');
    if (!form) {
      form = explorerForm(names);
      body.replaceChildren(form, el('div', { class: 'results' }, el('div', { class: 'skeleton block' })));
    }
    const results = $('.results', body);
    results.replaceChildren(el('div', { class: 'skeleton block' }));
    const { metrics, dimensions } = explorerChoice;
    const timeFirst = TIME_DIMENSIONS.has(dimensions[0] ?? '');
    const request = {
      metrics,
      dimensions,
      // Split by currency, every currency is a row (a currency filter would keep only one).
      filters: dimensions.includes('currency')
        ? { period: state.period, timezone: state.timezone }
        : { period: state.period, currency: state.currency, timezone: state.timezone },
      orderBy: dimensions.length && !timeFirst ? `${metrics[0]}:desc` : undefined,
      limit: EXPLORER_ROWS,
    };
    const answer = await api!.post<{ rows?: Row[] }>('/analytics/query', request, signal);
    const rows = answer.rows ?? [];
    results.dataset.request = JSON.stringify(request);
    const show = (row: Row, name: string, value: string | number | undefined): Cell => {
      if (typeof value !== 'number') return [String(value ?? ''), String(value ?? '')];
      // Split by currency, each row's money is in its own currency.
      if (MONEY_METRICS.has(name)) return [money(value, String(row.currency || state.currency)), value];
      if (name === 'conversion_rate') return [percent(value), value];
      return [count(value), value];
    };
    const cells = rows.map((row) => [...dimensions, ...metrics].map((name) => show(row, name, row[name] ?? (metrics.includes(name) ? 0 : ''))));
    const t = table('Query results', [...dimensions, ...metrics], cells, 'explorer', [...dimensions.map(() => false), ...metrics.map(() => true)]);
    results.replaceChildren();
    const chartHost = el('div', { class: 'chart-host' });
    const metric = metrics[0];
    if (rows.length && timeFirst && dimensions.length === 1) {
      results.append(chartHost);
      drawChart(
        chartHost,
        {
          times: rows.map((_r, i) => i),
          lines: [{ label: metric, values: rows.map((r) => Number(r[metric] ?? 0)), color: '#2b6cb0', axis: 'left' }],
          left: (v) => (MONEY_METRICS.has(metric) ? moneyShort(v, state.currency) : count(v)),
          when: (i) => String(rows[i]?.[dimensions[0]] ?? ''),
        },
        `${metric} by ${dimensions[0]}; the figures are in the table below`,
      );
    } else if (rows.length && dimensions.length) {
      const top = Math.max(...rows.map((r) => Number(r[metric] ?? 0)), 1);
      const bars = el('ul', { class: 'bars', 'aria-hidden': 'true' });
      for (const r of rows.slice(0, 12)) {
        const label = dimensions.map((d) => String(r[d] ?? '') || '(empty)').join(' · ');
        bars.append(el('li', {}, el('span', { class: 'bar-label', text: label }), bar(Number(r[metric] ?? 0) / top, label)));
      }
      results.append(bars);
    }
    results.append(rows.length ? el('div', { class: 'scroll' }, t) : el('p', { class: 'empty', text: 'No rows for this query.' }));
  });
}

// ------------------------------------------------------------------ export

/** Download an export with the key in a header: fetch it, then hand the browser a Blob (a link
 * to the API would need the key in the URL). */
async function download(format: string, button: HTMLButtonElement): Promise<void> {
  const section = panel('export');
  const status = $('[data-testid="export-status"]', section);
  const type = ($('[data-testid="export-type"]', section) as HTMLSelectElement).value;
  button.disabled = true;
  status.textContent = `Preparing ${type} as ${format.toUpperCase()}…`;
  loading(section);
  try {
    const response = await api!.raw('/analytics/export', { type, period: state.period, format, currency: state.currency, timezone: state.timezone });
    const blob = await response.blob();
    const disposition = response.headers.get('content-disposition') ?? '';
    const name = /filename="?([^";]+)"?/.exec(disposition)?.[1] ?? `${type}_${state.period}.${format}`;
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
    status.textContent = `Downloaded ${name} (${count(Math.ceil(blob.size / 1024))} KB).`;
    ready(section);
  } catch (error) {
    status.textContent = '';
    failed(section, error);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ filters, URL, key

function fillFilters(): void {
  const form = $('#filters') as HTMLFormElement;
  const options = (name: string, values: Array<[string, string]>, chosen: string): void => {
    const select = form.elements.namedItem(name) as HTMLSelectElement;
    if (!values.some(([v]) => v === chosen)) values.push([chosen, chosen]);
    select.replaceChildren(...values.map(([value, label]) => el('option', { value, text: label, selected: value === chosen })));
    select.value = chosen;
  };
  options('period', [...PERIODS], state.period);
  options('granularity', GRANULARITIES.map((g) => [g, g[0].toUpperCase() + g.slice(1)]), state.granularity);
  options('currency', CURRENCIES.map((c) => [c, c]), state.currency);
  const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : ['UTC', browserZone()];
  options('timezone', [...new Set(['UTC', browserZone(), ...zones])].map((z) => [z, z]), state.timezone);
  $('[data-testid="project-name"]').textContent = `· ${state.project}`;
}

function readFilters(): State {
  const form = $('#filters') as HTMLFormElement;
  const value = (name: string): string => (form.elements.namedItem(name) as HTMLSelectElement).value;
  const period = value('period');
  // A new period picks its natural granularity unless the user chose one by hand just now.
  const granularity = period !== state.period ? defaultGranularity(period) : value('granularity');
  return { period, granularity, currency: value('currency'), timezone: value('timezone'), project: state.project };
}

function refresh(): void {
  generation += 1;
  controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  const filters = { period: state.period, granularity: state.granularity, currency: state.currency, timezone: state.timezone };
  const sales = api!.get<Sales>('/analytics/sales', filters, signal);
  const doubled = doubledPeriod(state.period);
  const previous = doubled ? api!.get<Sales>('/analytics/sales', { ...filters, period: doubled }, signal) : null;
  const visitors = api!
    .post<{ rows?: Row[] }>('/analytics/query', { metrics: ['visitors'], filters: { period: state.period, timezone: state.timezone } }, signal)
    .then((a) => Number(a.rows?.[0]?.visitors ?? 0));
  // Unhandled-rejection guards: each panel reports these failures itself.
  sales.catch(() => undefined);
  previous?.catch(() => undefined);
  visitors.catch(() => undefined);
  void cards(sales, visitors);
  void salesChart(sales, previous);
  void products(signal);
  void funnel(signal);
  void customers(signal);
  void realtime(true).then(scheduleRealtime);
  void explorer(signal);
  const exportPanel = panel('export');
  exportPanel.dataset.state = 'ready';
  exportPanel.dataset.filters = stateSearch(state);
}

function showDashboard(): void {
  $('#key-panel').hidden = true;
  $('#dashboard').hidden = false;
  $('#filters').hidden = false;
  fillFilters();
  refresh();
}

function showKeyForm(message = ''): void {
  window.clearTimeout(realtimeTimer);
  api = null;
  catalogue = null;
  $('#dashboard').hidden = true;
  $('#filters').hidden = true;
  $('#key-panel').hidden = false;
  ($('#key-project') as HTMLInputElement).value = state.project;
  const error = $('#page-error');
  error.textContent = message;
  error.hidden = !message;
  ($('#key-input') as HTMLInputElement).focus();
}

function badKey(error: ApiError): void {
  if (!api) return; // already reported by another panel
  forgetKey(state.project);
  generation += 1;
  controller.abort();
  showKeyForm(error.message);
}

function start(key: string): void {
  api = new Api(key);
  catalogue = null;
  showDashboard();
}

function navigate(next: State): void {
  const changed = stateSearch(next) !== stateSearch(state);
  state = next;
  if (changed) history.pushState(null, '', stateSearch(state));
  fillFilters();
  if (api) refresh();
}

function main(): void {
  history.replaceState(null, '', stateSearch(state));
  $('#filters').addEventListener('change', () => navigate(readFilters()));
  window.addEventListener('popstate', () => {
    state = readState(location.search);
    const key = storedKey(state.project);
    if (key) {
      if (!api) start(key);
      else {
        fillFilters();
        refresh();
      }
    } else showKeyForm();
  });
  $('#key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const project = ($('#key-project') as HTMLInputElement).value.trim() || 'default';
    const input = $('#key-input') as HTMLInputElement;
    const key = input.value.trim();
    if (!key) return;
    input.value = '';
    storeKey(project, key);
    $('#page-error').hidden = true;
    if (project !== state.project) {
      state = { ...state, project };
      history.pushState(null, '', stateSearch(state));
    }
    start(key);
    $('#main').focus(); // the form is gone: keyboard and screen-reader users start at the figures
  });
  $('#export-form').addEventListener('click', (event) => {
    const button = (event.target as HTMLElement).closest<HTMLButtonElement>('button[data-format]');
    if (button && api) void download(button.dataset.format ?? 'csv', button);
  });
  $('#sign-out').addEventListener('click', () => {
    forgetKey(state.project);
    generation += 1;
    controller.abort();
    showKeyForm();
  });
  const key = storedKey(state.project);
  if (key) start(key);
  else showKeyForm();
}

main();
