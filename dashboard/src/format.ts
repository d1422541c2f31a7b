// Numbers as a shop owner reads them. Amounts arrive as whole minor units (2999 = 29.99 USD,
// 2999 = ¥2,999): the currency's own number of decimals comes from Intl.NumberFormat.

const locale = (): string | undefined => (typeof navigator !== 'undefined' ? navigator.language : undefined);

const moneyFormats = new Map<string, Intl.NumberFormat>();

function moneyFormat(currency: string): Intl.NumberFormat {
  let found = moneyFormats.get(currency);
  if (!found) {
    try {
      found = new Intl.NumberFormat(locale(), { style: 'currency', currency });
    } catch {
      // A code the browser does not know: plain digits with the code beside them.
      found = new Intl.NumberFormat(locale(), { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    }
    moneyFormats.set(currency, found);
  }
  return found;
}

/** The currency's minor-unit digits as Intl knows them (USD 2, JPY 0, BHD 3). */
export function minorDigits(currency: string): number {
  return moneyFormat(currency).resolvedOptions().maximumFractionDigits ?? 2;
}

/** `amount` minor units as money, exactly: the decimal string is built from the integer, so
 * no float division can round a large amount (Intl formats numeric strings exactly). */
export function money(amount: number, currency: string): string {
  const digits = minorDigits(currency);
  const negative = amount < 0;
  const whole = BigInt(Math.round(Math.abs(amount)));
  const scale = 10n ** BigInt(digits);
  const units = (whole / scale).toString();
  const fraction = digits ? '.' + (whole % scale).toString().padStart(digits, '0') : '';
  const text = `${negative ? '-' : ''}${units}${fraction}`;
  const format = moneyFormat(currency) as unknown as { format(value: string): string; resolvedOptions(): Intl.ResolvedNumberFormatOptions };
  const shown = format.format(text);
  return format.resolvedOptions().style === 'currency' ? shown : `${shown} ${currency}`;
}

/** A compact money label for chart axes (minor units in, e.g. "$1.2K" out). */
export function moneyShort(amount: number, currency: string): string {
  const value = amount / 10 ** minorDigits(currency);
  try {
    return new Intl.NumberFormat(locale(), { style: 'currency', currency, notation: 'compact', maximumFractionDigits: 1 }).format(value);
  } catch {
    return `${value}`;
  }
}

const integers = new Intl.NumberFormat(locale(), { maximumFractionDigits: 0 });
export function count(value: number): string {
  return integers.format(value);
}

const percents = new Intl.NumberFormat(locale(), { minimumFractionDigits: 1, maximumFractionDigits: 1 });
export function percent(value: number): string {
  return `${percents.format(value)} %`;
}

/** Growth as "+12.5 %" / "-3.0 %" / "new" (previous period empty) / "n/a". */
export function growth(value: number | undefined | null, known = true): string {
  if (!known) return 'n/a';
  if (value === undefined || value === null) return 'new';
  return `${value > 0 ? '+' : value < 0 ? '−' : '±'}${percents.format(Math.abs(value))} %`;
}

/** num / den * 100 to one decimal, rounded half away from zero on the exact ratio (integer
 * arithmetic, as the API rounds its percentages); 0 when den is 0. */
export function ratioPercent(num: number, den: number): number {
  if (!den) return 0;
  const sign = Math.sign(num) * Math.sign(den);
  const n = Math.abs(num);
  const d = Math.abs(den);
  return (sign * Math.floor((2000 * n + d) / (2 * d))) / 10;
}
