// What the page shows is its URL: period, granularity, currency, timezone and project are query
// parameters (shareable; the back button walks through them). The key is never among them.

export interface State {
  period: string;
  granularity: string;
  currency: string;
  timezone: string;
  project: string;
}

export const PERIODS: Array<[string, string]> = [
  ['1d', 'Today'],
  ['7d', 'Last 7 days'],
  ['30d', 'Last 30 days'],
  ['90d', 'Last 90 days'],
  ['12m', 'Last 12 months'],
];
export const GRANULARITIES = ['hour', 'day', 'week', 'month'];
export const CURRENCIES = ['USD', 'EUR', 'GBP', 'JPY'];

const PERIOD = /^([1-9][0-9]{0,2})([dm])$/;

export function browserZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
}

/** The granularity a period reads best at: hours for today, months for a year. */
export function defaultGranularity(period: string): string {
  const match = PERIOD.exec(period);
  if (!match) return 'day';
  const n = Number(match[1]);
  if (match[2] === 'm') return n >= 6 ? 'month' : 'week';
  if (n <= 2) return 'hour';
  return n > 120 ? 'week' : 'day';
}

export function readState(search: string): State {
  const params = new URLSearchParams(search);
  const period = PERIOD.test(params.get('period') ?? '') ? (params.get('period') as string) : '30d';
  const granularity = GRANULARITIES.includes(params.get('granularity') ?? '') ? (params.get('granularity') as string) : defaultGranularity(period);
  const currency = /^[A-Z]{3}$/.test(params.get('currency') ?? '') ? (params.get('currency') as string) : 'USD';
  const timezone = /^[A-Za-z0-9_+\-/]{1,64}$/.test(params.get('timezone') ?? '') ? (params.get('timezone') as string) : browserZone();
  const project = /^[A-Za-z0-9_.:-]{1,64}$/.test(params.get('project') ?? '') ? (params.get('project') as string) : 'default';
  return { period, granularity, currency, timezone, project };
}

export function stateSearch(state: State): string {
  const params = new URLSearchParams();
  params.set('period', state.period);
  params.set('granularity', state.granularity);
  params.set('currency', state.currency);
  params.set('timezone', state.timezone);
  params.set('project', state.project);
  return `?${params.toString()}`;
}

/** The period twice as long (30d -> 60d), whose older half is the previous period's buckets;
 * null past what the API accepts (366 days, 24 months). */
export function doubledPeriod(period: string): string | null {
  const match = PERIOD.exec(period);
  if (!match) return null;
  const n = Number(match[1]) * 2;
  if ((match[2] === 'd' && n > 366) || (match[2] === 'm' && n > 24)) return null;
  return `${n}${match[2]}`;
}

// The key lives in this tab's sessionStorage only, per project: closing the tab forgets it.
const keyName = (project: string): string => `cartlytics.readKey.${project}`;
export const storedKey = (project: string): string | null => sessionStorage.getItem(keyName(project));
export const storeKey = (project: string, key: string): void => sessionStorage.setItem(keyName(project), key);
export const forgetKey = (project: string): void => sessionStorage.removeItem(keyName(project));
