/**
 * Throwaway X.509 material for tests, made with the `openssl` CLI: a CA plus a server certificate for 127.0.0.1 /
 * localhost (TLS registries), and self-signed signing certificates for the token server (the registry's
 * `rootcertbundle`). Everything lives in a temp dir the caller removes with `cleanup()`.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export interface ServerCerts {
  dir: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  cleanup(): void;
}

/** A CA and a server certificate signed by it, valid for the given IPs/DNS names (default 127.0.0.1, localhost). */
export function makeServerCerts(opts: { ips?: string[]; dns?: string[] } = {}): ServerCerts {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-certs-'));
  const ips = opts.ips ?? ['127.0.0.1'];
  const dns = opts.dns ?? ['localhost'];
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(
    [
      'req',
      '-x509',
      ...ec,
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      '2',
      '-subj',
      '/CN=kiln test CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  openssl(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', `/CN=${ips[0] ?? dns[0]}`], dir);
  const san = [...ips.map((i) => `IP:${i}`), ...dns.map((d) => `DNS:${d}`)].join(',');
  writeFileSync(
    join(dir, 'ext.cnf'),
    `subjectAltName=${san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n`,
  );
  openssl(
    [
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'server.crt',
      '-days',
      '2',
      '-extfile',
      'ext.cnf',
    ],
    dir,
  );
  return {
    dir,
    caFile: join(dir, 'ca.crt'),
    certFile: join(dir, 'server.crt'),
    keyFile: join(dir, 'server.key'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface SigningCert {
  dir: string;
  keyFile: string;
  certFile: string;
  /** PEM private key. */
  keyPem: string;
  /** DER of the certificate, base64 (for a JWT `x5c` header). */
  certDerBase64: string;
  cleanup(): void;
}

/** A self-signed certificate for a token signing key (EC P-256 or RSA 2048). */
export function makeSigningCert(keyType: 'ec' | 'rsa' = 'ec'): SigningCert {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-signing-'));
  const keyArgs =
    keyType === 'ec' ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'] : ['-newkey', 'rsa:2048'];
  openssl(
    [
      'req',
      '-x509',
      ...keyArgs,
      '-nodes',
      '-keyout',
      'signing.key',
      '-out',
      'signing.crt',
      '-days',
      '2',
      '-subj',
      '/CN=kiln token signer',
    ],
    dir,
  );
  openssl(['x509', '-in', 'signing.crt', '-outform', 'DER', '-out', 'signing.der'], dir);
  return {
    dir,
    keyFile: join(dir, 'signing.key'),
    certFile: join(dir, 'signing.crt'),
    keyPem: readFileSync(join(dir, 'signing.key'), 'utf8'),
    certDerBase64: readFileSync(join(dir, 'signing.der')).toString('base64'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
