/**
 * One Server-Sent Events block (the lines between two blank lines) read by the SSE parsing rules: fields `event`
 * and `data` (repeated `data` lines joined with LF), one optional space after the colon, comment lines skipped.
 * Pure (no Node or DOM API): the CLI's log decoder (sse.ts) and the web UI's (ui/shared/logstream.ts) share it.
 */
export function parseEventBlock(block: string): { event: string; data: string | null } {
  let event = 'message';
  let data: string | null = null;
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data = data === null ? value : data + '\n' + value;
  }
  return { event, data };
}
