// Small DOM helpers: every text goes in through textContent (never innerHTML), so a product
// name or a page path from the events cannot inject markup.

type Attrs = Record<string, string | number | boolean | undefined>;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Array<Node | string>
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (name === 'class') node.className = String(value);
    else if (name === 'text') node.textContent = String(value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children);
  return node;
}

export function $(selector: string, root: ParentNode = document): HTMLElement {
  const found = root.querySelector<HTMLElement>(selector);
  if (!found) throw new Error(`missing element ${selector}`);
  return found;
}

/** A table: headers, then rows of cells; a cell given as [text, raw] carries its raw figure in
 * data-value (what the end-to-end test compares with the API's JSON). */
export type Cell = string | [string, number | string];

export function table(caption: string, headers: string[], rows: Cell[][], testid: string, numeric: boolean[] = []): HTMLTableElement {
  const head = el('thead', {}, el('tr', {}, ...headers.map((h, i) => el('th', { scope: 'col', class: numeric[i] ? 'num' : undefined, text: h }))));
  const body = el(
    'tbody',
    {},
    ...rows.map((row) =>
      el(
        'tr',
        { 'data-testid': `${testid}-row` },
        ...row.map((cell, i) =>
          typeof cell === 'string'
            ? el('td', { class: numeric[i] ? 'num' : undefined, text: cell })
            : el('td', { class: numeric[i] ? 'num' : undefined, 'data-value': String(cell[1]), text: cell[0] }),
        ),
      ),
    ),
  );
  return el('table', { 'data-testid': testid }, el('caption', { class: 'visually-hidden', text: caption }), head, body);
}
