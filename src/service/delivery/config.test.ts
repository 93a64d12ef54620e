/**
 * The delivery keys of the config (`notifications:`, `commitStatus:`, `publicUrl`) through the real parser:
 * defaults, every error with its path and line, URLs that carry no credentials, and what the API shows of them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, parseConfigText, parseProjectText } from '../config/parse.js';
import { redactProject } from '../config/secrets.js';
import { redactTargetUrl } from './config.js';

const BASE = `name: shop
repository: https://git.example.com/acme/shop.git
registry: r.example.com/shop
images: [{name: web}]
`;

function errorsOf(text: string): string[] {
  try {
    parseProjectText(text, 'p.yaml');
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.errors.map((i) => `${i.path}: ${i.message}${i.line === undefined ? '' : ` @${i.line}`}`);
  }
  assert.fail('expected a ConfigError');
}

test('notifications and commit statuses with their defaults', () => {
  const p = parseProjectText(
    BASE +
      `notifications:
  - url: https://hooks.example.com/kiln
    secretEnv: HOOK_SECRET
  - url: http://receiver.ops.svc:8080/events?team=web
    events: [failed, timed-out]
    maxAttempts: 3
commitStatus:
  github: {repo: acme/shop, tokenEnv: GH_TOKEN}
  gitlab: {apiUrl: "https://gitlab.example.com/api/v4/", path: acme/shop, tokenFile: /run/secrets/gl}
`,
    'p.yaml',
  );
  assert.deepEqual(p.notifications, [
    {
      url: 'https://hooks.example.com/kiln',
      secretEnv: 'HOOK_SECRET',
      events: ['succeeded', 'failed'],
      maxAttempts: 6,
    },
    { url: 'http://receiver.ops.svc:8080/events?team=web', events: ['failed', 'timed-out'], maxAttempts: 3 },
  ]);
  assert.deepEqual(p.commitStatus, {
    github: { repo: 'acme/shop', apiUrl: 'https://api.github.com', tokenEnv: 'GH_TOKEN' },
    gitlab: { apiUrl: 'https://gitlab.example.com/api/v4', path: 'acme/shop', tokenFile: '/run/secrets/gl' },
  });
});

test('every delivery error is reported with its path and line, never echoing the URL', () => {
  const errors = errorsOf(
    BASE +
      `notifications:
  - url: https://user:pa55word@hooks.example.com/x
    secretEnv: A
    secretFile: /run/b
  - url: ftp://hooks.example.com/x
  - url: https://hooks.example.com/x#frag
    events: [queued]
    maxAttempts: 0
  - {secretEnv: A}
commitStatus:
  github: {repo: acme, apiUrl: "https://api.github.com/?x=1"}
  gitlab: {projectId: 4, path: a/b, tokenEnv: T, tokenFile: /t}
`,
  );
  assert.deepEqual(errors, [
    'notifications[0]: needs secretEnv or secretFile, not both @6',
    'notifications[0].url: must not contain user-info (user:password@) @6',
    'notifications[1].url: must be an http:// or https:// URL @9',
    'notifications[2].url: must not contain a fragment (#…) @10',
    'notifications[2].events[0]: must be one of succeeded, failed, cancelled, timed-out @11',
    'notifications[2].maxAttempts: must be at least 1 @12',
    'notifications[3].url: required @13',
    'commitStatus.github: needs tokenEnv or tokenFile @15',
    'commitStatus.github.repo: must be OWNER/NAME @15',
    'commitStatus.github.apiUrl: must not contain a query (?…) @15',
    'commitStatus.gitlab: needs tokenEnv or tokenFile, not both @16',
    'commitStatus.gitlab: needs projectId or path, not both @16',
  ]);
  assert.ok(!errors.join('\n').includes('pa55word'));
  assert.deepEqual(errorsOf(BASE + 'commitStatus: {}\n'), ['commitStatus: needs github or gitlab @5']);
  assert.deepEqual(errorsOf(BASE + 'notifications: [{url: "https://h/x", events: [failed, failed]}]\n'), [
    'notifications[0].events: lists an event twice @5',
  ]);
  assert.deepEqual(errorsOf(BASE + 'commitStatus: {gitlab: {tokenEnv: T}}\n'), [
    'commitStatus.gitlab: needs projectId or path @5',
  ]);
});

test('publicUrl: an http(s) base URL, trailing slashes dropped; no user-info or query', () => {
  assert.equal(
    parseConfigText('publicUrl: https://kiln.example.com/ci/\n', 'c.yaml').publicUrl,
    'https://kiln.example.com/ci',
  );
  assert.equal(parseConfigText('{}', 'c.yaml').publicUrl, undefined);
  for (const [url, why] of [
    ['https://kiln.example.com/?a=1', 'must not contain a query'],
    ['https://u:p@kiln.example.com', 'must not contain user-info'],
    ['kiln.example.com', 'must be an http:// or https:// URL'],
  ]) {
    assert.throws(
      () => parseConfigText(`publicUrl: "${url}"\n`, 'c.yaml'),
      (e: unknown) =>
        e instanceof ConfigError && e.errors.some((i) => i.path === 'publicUrl' && i.message.includes(why!)),
      url,
    );
  }
});

test('API answers: references stay, query values are hidden, attached values never come out', () => {
  const p = parseProjectText(
    BASE +
      `notifications: [{url: "https://h.example.com/hook?token=abc123&team=x", secretEnv: HOOK_SECRET}]
commitStatus: {github: {repo: acme/shop, tokenEnv: GH_TOKEN}}
`,
    'p.yaml',
  );
  const withValues = {
    ...p,
    notifications: [{ ...p.notifications![0]!, secret: 's3cret-value' }],
    commitStatus: { github: { ...p.commitStatus!.github!, token: 'ghp_value' } },
  };
  const r = redactProject(withValues);
  assert.deepEqual(r.notifications, [
    {
      url: 'https://h.example.com/hook?token=…&team=…',
      secretEnv: 'HOOK_SECRET',
      events: ['succeeded', 'failed'],
      maxAttempts: 6,
    },
  ]);
  assert.deepEqual(r.commitStatus, {
    github: { repo: 'acme/shop', apiUrl: 'https://api.github.com', tokenEnv: 'GH_TOKEN' },
  });
  const json = JSON.stringify(r);
  for (const v of ['s3cret-value', 'ghp_value', 'abc123']) assert.ok(!json.includes(v), v);
  assert.deepEqual(redactProject(parseProjectText(BASE, 'p.yaml')), parseProjectText(BASE, 'p.yaml'), 'none: none');
});

test('redactTargetUrl drops user-info and query values, keeps the rest as written', () => {
  assert.equal(redactTargetUrl('https://hooks.example.com/a/b'), 'https://hooks.example.com/a/b');
  assert.equal(redactTargetUrl('https://u:p@h.example.com/a?x=1&x=2&y'), 'https://h.example.com/a?x=…&y=…');
  assert.equal(redactTargetUrl('not a url'), '(invalid URL)');
});
