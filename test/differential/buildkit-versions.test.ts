/** The BuildKit v0.8 vs newer history renderings accepted by the differential runner (strings from real runs). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newerBuildKitEquivalent as eq } from './buildkit-versions.js';

test('COPY/ADD: newer BuildKit adds --chown/--chmod/--parents; nothing else may change', () => {
  assert.ok(eq('COPY f.txt /o/by-names # buildkit', 'COPY --chown=app:staff f.txt /o/by-names # buildkit'));
  assert.ok(eq('COPY dir /o/chmod-dir/ # buildkit', 'COPY --chmod=600 dir /o/chmod-dir/ # buildkit'));
  assert.ok(eq('ADD f.txt /o/add # buildkit', 'ADD --chown=bin:daemon --chmod=0640 f.txt /o/add # buildkit'));
  assert.ok(!eq('COPY f.txt /a # buildkit', 'COPY --chown=app f.txt /b # buildkit'), 'different destination');
  assert.ok(!eq('COPY f.txt /a # buildkit', 'ADD --chown=app f.txt /a # buildkit'), 'different instruction');
  assert.ok(!eq('COPY f.txt /a # buildkit', 'COPY --from=x f.txt /a # buildkit'), 'other flags are not excused');
  assert.ok(!eq('COPY f.txt /a # buildkit', 'COPY f.txt /a'), 'the # buildkit suffix must match');
  assert.ok(!eq('COPY f.txt /a # buildkit', 'COPY f.txt /a # buildkit'.replace('f.txt', 'g.txt')));
});

test('ARG: a bare name may gain its value; explicit NAME=value must stay identical', () => {
  assert.ok(eq('ARG OVERRIDE', 'ARG OVERRIDE=from-cli'));
  assert.ok(eq('ARG B', 'ARG B=two'));
  assert.ok(!eq('ARG A=1', 'ARG A=2'));
  assert.ok(!eq('ARG B', 'ARG C=two'));
  assert.ok(!eq('ARG B', 'ARG B=two C=3'));
});

test('EXPOSE: Go map rendering vs list with the same ports', () => {
  assert.ok(
    eq(
      'EXPOSE map[443/udp:{} 53/tcp:{} 53/udp:{} 80/tcp:{} 8080/tcp:{}]',
      'EXPOSE [8080/tcp 443/udp 53/tcp 53/udp 80/tcp]',
    ),
  );
  assert.ok(eq('EXPOSE map[8080/tcp:{}]', 'EXPOSE [8080/tcp]'));
  assert.ok(eq('EXPOSE map[443/udp:{} 80/tcp:{}]', 'EXPOSE 80/tcp 443/udp'), 'v0.35: ports joined by spaces');
  assert.ok(!eq('EXPOSE map[443/udp:{} 80/tcp:{}]', 'EXPOSE 80/tcp'));
  assert.ok(!eq('EXPOSE map[80/tcp:{}]', 'EXPOSE map[80/tcp:{}]'), 'the same old rendering is no newer one');
  assert.ok(!eq('EXPOSE map[8080/tcp:{}]', 'EXPOSE [8080/udp]'));
  assert.ok(!eq('EXPOSE map[80/tcp:{} 81/tcp:{}]', 'EXPOSE [80/tcp]'));
});

test('HEALTHCHECK: v0.8 &{…} struct vs the newer field rendering with the same values', () => {
  assert.ok(
    eq(
      `HEALTHCHECK &{["CMD-SHELL" "wget -q -O- http://localhost/ || exit 1"] "5s" "3s" "1s" '\\x04'}`,
      'HEALTHCHECK {Test:[CMD-SHELL wget -q -O- http://localhost/ || exit 1] Interval:5s Timeout:3s StartPeriod:1s StartInterval:0s Retries:4}',
    ),
  );
  assert.ok(
    eq(
      `HEALTHCHECK &{["CMD-SHELL" "echo \\"shell form $HOME\\" && test -f /m"] "0s" "7s" "0s" '\\x00'}`,
      'HEALTHCHECK {Test:[CMD-SHELL echo "shell form $HOME" && test -f /m] Interval:0s Timeout:7s StartPeriod:0s StartInterval:0s Retries:0}',
    ),
  );
  assert.ok(
    !eq(
      `HEALTHCHECK &{["CMD" "/bin/true"] "30s" "0s" "0s" '\\x00'}`,
      'HEALTHCHECK {Test:[CMD /bin/true] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}',
    ),
    'retries differ',
  );
  assert.ok(
    !eq(
      `HEALTHCHECK &{["CMD" "/bin/true"] "30s" "0s" "0s" '\\x00'}`,
      'HEALTHCHECK {Test:[CMD /bin/false] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}',
    ),
    'command differs',
  );
});

test('unrelated instructions are never excused', () => {
  assert.ok(!eq('RUN /bin/sh -c true # buildkit', 'RUN /bin/sh -c false # buildkit'));
  assert.ok(!eq('ENV A=1', 'ENV A=2'));
});
