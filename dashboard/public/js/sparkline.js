// Sparklines: the path geometry is a pure function; the SVG element is made and updated in place.

const SVG_NS = 'http://www.w3.org/2000/svg';
export const SPARK_WIDTH = 120;
export const SPARK_HEIGHT = 32;
const PAD = 2;

/**
 * SVG path data for `values` drawn left to right across `width` x `height`. The vertical scale is
 * the data's own range widened to `min`/`max` of the field only when the data is flat, so small
 * live changes stay visible; a single value is a short flat line.
 */
export function sparklinePath(values, width = SPARK_WIDTH, height = SPARK_HEIGHT, capacity = values.length) {
  const points = values.filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (points.length === 0) return { line: '', area: '', last: null };
  let lo = Math.min(...points);
  let hi = Math.max(...points);
  if (hi - lo < 1e-9) {
    // Flat data: centre it instead of drawing it along an edge.
    lo -= 1;
    hi += 1;
  }
  const slots = Math.max(capacity, points.length, 2) - 1;
  // Fewer points than slots: right-align so new values always enter at the right edge.
  const offset = slots - (points.length - 1);
  const x = (i) => round(((offset + i) / slots) * width);
  const y = (v) => round(PAD + (1 - (v - lo) / (hi - lo)) * (height - 2 * PAD));
  const coords = points.length === 1
    ? [[Math.max(0, width - 8), y(points[0])], [width, y(points[0])]]
    : points.map((v, i) => [x(i), y(v)]);
  const line = coords.map(([px, py], i) => `${i === 0 ? 'M' : 'L'}${px} ${py}`).join(' ');
  const area = `${line} L${coords.at(-1)[0]} ${height} L${coords[0][0]} ${height} Z`;
  return { line, area, last: coords.at(-1), min: Math.min(...points), max: Math.max(...points) };
}

function round(n) {
  return Math.round(n * 10) / 10;
}

/** An empty sparkline element; `updateSparkline` draws into it. */
export function createSparkline(doc) {
  const svg = doc.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`);
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  for (const cls of ['spark-area', 'spark-line']) {
    const path = doc.createElementNS(SVG_NS, 'path');
    path.setAttribute('class', cls);
    svg.append(path);
  }
  const dot = doc.createElementNS(SVG_NS, 'circle');
  dot.setAttribute('class', 'spark-dot');
  dot.setAttribute('r', '2.5');
  svg.append(dot);
  return svg;
}

export function updateSparkline(svg, values, capacity) {
  const { line, area, last } = sparklinePath(values, SPARK_WIDTH, SPARK_HEIGHT, capacity);
  const [areaPath, linePath, dot] = svg.children;
  areaPath.setAttribute('d', area);
  linePath.setAttribute('d', line);
  if (last) {
    dot.setAttribute('cx', String(last[0]));
    dot.setAttribute('cy', String(last[1]));
    dot.removeAttribute('display');
  } else {
    dot.setAttribute('display', 'none');
  }
}
