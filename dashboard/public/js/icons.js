// Small line icons for device kinds. A kind without its own icon gets the generic chip, so a new
// kind of device still renders; the icon is decoration only (aria-hidden).

const SVG_NS = 'http://www.w3.org/2000/svg';

const PATHS = {
  light: 'M9 18h6M10 21h4M12 3a6 6 0 0 0-3.9 10.6c.6.6.9 1.4.9 2.4h6c0-1 .3-1.8.9-2.4A6 6 0 0 0 12 3z',
  plug: 'M9 2v5M15 2v5M6 7h12v4a6 6 0 0 1-12 0V7zM12 17v5',
  thermostat: 'M14 14.8V4.5a2 2 0 0 0-4 0v10.3a4 4 0 1 0 4 0zM12 10v7',
  sensor: 'M12 13a1.5 1.5 0 1 0 0-3 1.5 1.5 0 0 0 0 3zM16.2 7.8a6 6 0 0 1 0 8.4M7.8 16.2a6 6 0 0 1 0-8.4M19 5a10 10 0 0 1 0 14M5 19A10 10 0 0 1 5 5',
  blind: 'M3 3h18M5 3v13M19 3v13M5 7h14M5 11h14M5 15h14M12 16v5',
  generic: 'M9 3v2M15 3v2M9 19v2M15 19v2M3 9h2M3 15h2M19 9h2M19 15h2M7 5h10a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H7a2 2 0 0 1-2-2V7a2 2 0 0 1 2-2zM9 9h6v6H9z',
};

export function kindIcon(doc, kind) {
  const svg = doc.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('class', 'kind-icon');
  const path = doc.createElementNS(SVG_NS, 'path');
  path.setAttribute('d', PATHS[kind] ?? PATHS.generic);
  svg.append(path);
  return svg;
}
