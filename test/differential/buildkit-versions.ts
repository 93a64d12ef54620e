/**
 * History `created_by` strings that differ only because Debian's BuildKit (v0.8, dockerfile 1.2 frontend) is older
 * than current BuildKit (the differential reference). Newer dockerfile frontends changed how some instructions are
 * recorded:
 *
 *   COPY/ADD     v0.8: `COPY src dst # buildkit`        current: `COPY --chown=u:g --chmod=0755 src dst # buildkit`
 *                (current BuildKit writes --parents, --chown and --chmod into the history; v0.8 writes no flags)
 *   ARG          v0.8: `ARG NAME`                        current: `ARG NAME=value` (the value in effect)
 *   EXPOSE       v0.8: `EXPOSE map[443/udp:{} 80/tcp:{}]` (Go map)   current: `EXPOSE 80/tcp 443/udp` (releases
 *                between printed the Go list `EXPOSE [80/tcp 443/udp]`; both are accepted)
 *   HEALTHCHECK  v0.8: `HEALTHCHECK &{["CMD" "x"] "5s" "0s" "0s" '\x03'}`
 *                current: `HEALTHCHECK {Test:[CMD x] Interval:5s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}`
 *
 * `newerBuildKitEquivalent(v08, current)` is true when `current` is exactly the newer rendering of the same
 * instruction (same sources and destination, same ARG names, same ports, same healthcheck values). Anything else —
 * a different path, port, flag order, value — is not. The differential runner uses it to tell v0.8's older
 * renderings apart from real differences when it reports v0.8 as a second opinion.
 */

const COPY_FLAG = /^--(chown|chmod)=\S+$|^--parents$/;

function copyEquivalent(ref: string, cand: string): boolean {
  const r = /^(COPY|ADD) (.*)$/.exec(ref);
  const c = /^(COPY|ADD) (.*)$/.exec(cand);
  if (!r || !c || r[1] !== c[1]) return false;
  const words = c[2].split(' ');
  let i = 0;
  while (i < words.length && COPY_FLAG.test(words[i])) i++;
  return i > 0 && words.slice(i).join(' ') === r[2];
}

function argEquivalent(ref: string, cand: string): boolean {
  if (!ref.startsWith('ARG ') || !cand.startsWith('ARG ')) return false;
  const rw = ref.slice(4).split(' ');
  const cw = cand.slice(4).split(' ');
  // v0.8 prints a bare NAME where the newer form prints NAME=value; an explicit NAME=x must stay identical
  return (
    rw.length === cw.length &&
    rw.every((w, i) => (w.includes('=') ? w === cw[i] : cw[i] === w || cw[i].startsWith(`${w}=`)))
  );
}

function exposeEquivalent(ref: string, cand: string): boolean {
  const r = /^EXPOSE map\[(.*)\]$/.exec(ref);
  const c = /^EXPOSE \[(.*)\]$/.exec(cand) ?? /^EXPOSE ((?!map\[)[^[\]]*)$/.exec(cand);
  if (!r || !c) return false;
  const rp = r[1]
    .split(' ')
    .map((p) => p.replace(/:\{\}$/, ''))
    .sort();
  const cp = c[1].split(' ').sort();
  return JSON.stringify(rp) === JSON.stringify(cp);
}

function goQuotedList(s: string): string[] | undefined {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"/g;
  let m: RegExpExecArray | null;
  let rest = s;
  while ((m = re.exec(s)) !== null) {
    try {
      out.push(JSON.parse(`"${m[1]}"`) as string);
    } catch {
      return undefined;
    }
    rest = rest.replace(m[0], '');
  }
  return rest.trim() === '' ? out : undefined;
}

function healthcheckEquivalent(ref: string, cand: string): boolean {
  // v0.8: HEALTHCHECK &{["CMD-SHELL" "cmd"] "5s" "3s" "1s" '\x04'}
  const r = /^HEALTHCHECK &\{\[(.*)\] "([^"]*)" "([^"]*)" "([^"]*)" '\\x([0-9a-f]{2})'\}$/.exec(ref);
  // newer: HEALTHCHECK {Test:[CMD-SHELL cmd] Interval:5s Timeout:3s StartPeriod:1s StartInterval:0s Retries:4}
  const c =
    /^HEALTHCHECK \{Test:\[(.*)\] Interval:(\S+) Timeout:(\S+) StartPeriod:(\S+) StartInterval:(\S+) Retries:(\d+)\}$/.exec(
      cand,
    );
  if (!r || !c) return false;
  const test = goQuotedList(r[1]);
  if (!test || test.join(' ') !== c[1]) return false;
  return r[2] === c[2] && r[3] === c[3] && r[4] === c[4] && c[5] === '0s' && parseInt(r[5], 16) === Number(c[6]);
}

/** True when `candidate` is the current-BuildKit rendering of the instruction BuildKit v0.8 recorded as `reference`. */
export function newerBuildKitEquivalent(reference: string, candidate: string): boolean {
  const strip = (s: string): string => s.replace(/ # buildkit$/, '');
  const r = strip(reference);
  const c = strip(candidate);
  if (reference.endsWith(' # buildkit') !== candidate.endsWith(' # buildkit')) return false;
  return copyEquivalent(r, c) || argEquivalent(r, c) || exposeEquivalent(r, c) || healthcheckEquivalent(r, c);
}
