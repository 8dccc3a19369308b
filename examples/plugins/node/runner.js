#!/usr/bin/env node
// A protogate plugin runner in Node.js: protogate.plugin.v1.PluginRunner + grpc.health.v1 on the address the
// gateway gives in PROTOGATE_RUNNER_ADDRESS ("unix:/path.sock" or "host:port"). One plugin: require-header.
// Protocol 2: besides the unary calls it serves the Calls stream, which the gateway prefers (one stream per
// gateway process, calls batched on it).
//
//   npm ci --prefix examples/plugins/node
//   PROTOGATE_RUNNER_ADDRESS=unix:/tmp/runner.sock node examples/plugins/node/runner.js
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const { HealthImplementation } = require('grpc-health-check');

// Read before anything slow: a parent that dies before we look would leave us watching init.
const START_PPID = currentPpid();

const PROTOS = path.resolve(__dirname, '../../../protos');
const SERVICE_NAME = 'protogate.plugin.v1.PluginRunner';
const MAX_TOKENS = 4096;
const PROTOCOL_VERSION = 2;
const epoch = crypto.randomBytes(8).toString('hex');

// google/protobuf/struct.proto is built into protobufjs, so only our own tree is an include dir.
const definition = protoLoader.loadSync('protogate/plugin/v1/runner.proto', {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: false,
  arrays: true,
  objects: true,
  oneofs: true,
});
const pluginV1 = grpc.loadPackageDefinition(definition).protogate.plugin.v1;

// google.rpc.Status / ErrorInfo / BadRequest, for the grpc-status-details-bin trailer (the rich error model).
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: { nested: { Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } } } },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: { fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } } },
              },
            },
          },
        },
      },
    },
  },
});

function richError(code, message, detailType, detail) {
  const type = rpcTypes.lookupType(`google.rpc.${detailType}`);
  const status = rpcTypes.lookupType('google.rpc.Status').encode({
    code,
    message,
    details: [{ type_url: `type.googleapis.com/google.rpc.${detailType}`, value: type.encode(detail).finish() }],
  }).finish();
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', Buffer.from(status));
  return { code, details: message, metadata };
}

// ---------------------------------------------------------------------------------------------------------------
// The plugin

const requireHeader = {
  name: 'require-header',
  description: 'Stop requests that lack a configured header.',
  schema: {
    type: 'object',
    additionalProperties: false,
    required: ['header'],
    properties: {
      header: { type: 'string', minLength: 1, description: 'header that must be present' },
      status: { type: 'integer', minimum: 100, maximum: 599, default: 403 },
      message: { type: 'string', default: 'missing required header' },
    },
  },
  // Returns [config, errors]; errors are [field path, message] pairs.
  validate(raw) {
    const errors = [];
    for (const key of Object.keys(raw)) {
      if (!(key in this.schema.properties)) errors.push([key, 'unknown field']);
    }
    if (typeof raw.header !== 'string' || raw.header.length === 0) errors.push(['header', 'a non-empty string is required']);
    const status = raw.status === undefined ? 403 : raw.status;
    if (!Number.isInteger(status) || status < 100 || status > 599) errors.push(['status', 'an integer 100..599 is required']);
    const message = raw.message === undefined ? 'missing required header' : raw.message;
    if (typeof message !== 'string') errors.push(['message', 'a string is required']);
    return [{ header: String(raw.header || '').toLowerCase(), status, message }, errors];
  },
  onRequest(request, config) {
    if (request.headers.some((h) => h.name.toLowerCase() === config.header)) return { pass: {} };
    return {
      stop: {
        status: config.status,
        headers: [{ name: 'content-type', value: 'application/json' }],
        body: Buffer.from(JSON.stringify({ message: config.message, header: config.header })),
      },
    };
  },
};
const PLUGINS = new Map([[requireHeader.name, requireHeader]]);

// ---------------------------------------------------------------------------------------------------------------
// PluginRunner

const tokens = new Map(); // token -> [{plugin, config}], in LRU order (Map keeps insertion order)
let tokenCounter = 0;

// protobufjs's built-in struct.proto uses camelCase field names even under keepCase, so accept both.
function structToObject(struct) {
  const value = (v) => {
    const kind = String(v.kind || '').replace(/_([a-z])/g, (_, c) => c.toUpperCase());
    const field = (name) => (v[name] !== undefined ? v[name] : v[name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)]);
    switch (kind) {
      case 'numberValue':
      case 'stringValue':
      case 'boolValue':
        return field(kind);
      case 'structValue':
        return structToObject(field(kind));
      case 'listValue':
        return (field(kind).values || []).map(value);
      default:
        return null;
    }
  };
  return Object.fromEntries(Object.entries(struct.fields || {}).map(([k, v]) => [k, value(v)]));
}

function lookup(token) {
  const chain = tokens.get(token);
  if (chain === undefined) return undefined;
  tokens.delete(token);
  tokens.set(token, chain);
  return chain;
}

function tokenUnknown(token) {
  const message = `TOKEN_UNKNOWN: token ${JSON.stringify(token)} is not prepared`;
  return richError(grpc.status.FAILED_PRECONDITION, message, 'ErrorInfo', {
    reason: 'TOKEN_UNKNOWN',
    domain: 'plugin.protogate.dev',
    metadata: { epoch },
  });
}

// The calls, whichever way they come: [error, answer], error as { code, details, metadata? }.
function requestCall(request) {
  const chain = lookup(request.token);
  if (chain === undefined) return [tokenUnknown(request.token), null];
  const seen = { ...request, headers: request.headers || [] };
  for (const { plugin, config } of chain) {
    let answer;
    try {
      answer = plugin.onRequest(seen, config);
    } catch (err) {
      return [{ code: grpc.status.INTERNAL, details: `plugin ${plugin.name} failed in on_request: ${err}` }, null];
    }
    if (answer.stop) return [null, answer];
  }
  return [null, { pass: {} }];
}

function responseCall(request) {
  if (lookup(request.token) === undefined) return [tokenUnknown(request.token), null];
  return [null, {}]; // require-header has no response phase: nothing changes
}

// One Call of the Calls stream -> its Result (same answers and status codes as the unary calls).
function streamResult(call) {
  const run = { http_req: requestCall, http_resp: responseCall }[call.call];
  if (run === undefined) {
    return { id: call.id, error: { code: grpc.status.UNIMPLEMENTED, message: `unknown kind of call: ${call.call}` } };
  }
  const [err, answer] = run(call[call.call]);
  return err ? { id: call.id, error: { code: err.code, message: err.details } } : { id: call.id, [call.call]: answer };
}

const streams = new Set(); // open Calls streams, ended on shutdown

const service = {
  Describe(call, callback) {
    callback(null, {
      runner_name: 'protogate-node-runner',
      runner_version: require('./package.json').version,
      epoch,
      protocol_version: PROTOCOL_VERSION,
      plugins: [...PLUGINS.values()].map((p) => ({
        name: p.name,
        config_schema: JSON.stringify(p.schema),
        description: p.description,
        request_phase: true,
        response_phase: false,
        needs_request_body: false,
        needs_response_body: false,
        vars: [],
      })),
    });
  },

  PrepareConf(call, callback) {
    const chain = [];
    const errors = [];
    (call.request.plugins || []).forEach((conf, index) => {
      const where = `plugins[${index}](${conf.name})`;
      const plugin = PLUGINS.get(conf.name);
      if (!plugin) {
        errors.push([`plugins[${index}].name`, `unknown plugin ${JSON.stringify(conf.name)}`]);
        return;
      }
      let raw = {};
      if (conf.config === 'config_json') {
        try {
          raw = conf.config_json.trim() ? JSON.parse(conf.config_json) : {};
        } catch (err) {
          errors.push([`${where}.config_json`, `invalid JSON: ${err.message}`]);
          return;
        }
      } else if (conf.config === 'config_struct') {
        raw = structToObject(conf.config_struct);
      }
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
        errors.push([`${where}.config`, 'must be a JSON object']);
        return;
      }
      const [config, problems] = plugin.validate(raw);
      for (const [field, text] of problems) errors.push([`${where}.config.${field}`, text]);
      chain.push({ plugin, config });
    });
    if (errors.length > 0) {
      const message = `invalid plugin config: ${errors.map(([f, t]) => `${f}: ${t}`).join('; ')}`;
      const violations = errors.map(([field, description]) => ({ field, description }));
      callback(richError(grpc.status.INVALID_ARGUMENT, message, 'BadRequest', { field_violations: violations }));
      return;
    }
    tokenCounter += 1;
    const token = `${epoch}.${tokenCounter}`; // the epoch prefix keeps old tokens unknown after a restart
    tokens.set(token, chain);
    while (tokens.size > MAX_TOKENS) tokens.delete(tokens.keys().next().value);
    callback(null, {
      token,
      epoch,
      request_phase: chain.length > 0,
      response_phase: false,
      needs_request_body: false,
      needs_response_body: false,
      vars: [],
    });
  },

  HTTPReqCall(call, callback) {
    const [err, answer] = requestCall(call.request);
    callback(err, answer);
  },

  HTTPRespCall(call, callback) {
    const [err, answer] = responseCall(call.request);
    callback(err, answer);
  },

  ReleaseConf(call, callback) {
    tokens.delete(call.request.token);
    callback(null, {});
  },

  // Our plugin never waits, so each CallBatch is answered at once with one ResultBatch. A runner whose plugins
  // wait would answer each call when it is done (in any order), gathering results that are ready together.
  Calls(call) {
    streams.add(call);
    const forget = () => streams.delete(call);
    call.on('data', (batch) => {
      const results = (batch.calls || []).map(streamResult);
      if (results.length > 0) call.write({ results });
    });
    call.on('end', () => {
      forget();
      call.end(); // the gateway half-closed: every call it sent is answered
    });
    call.on('error', forget); // the gateway went away
    call.on('cancelled', forget);
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Process: listen, watch the parent, stop on SIGTERM

function socketPathOf(address) {
  if (!address.startsWith('unix:')) return null;
  let p = address.slice('unix:'.length);
  if (p.startsWith('//')) p = p.slice(2);
  return p;
}

// Remove a socket left by a dead runner; refuse a live one or a non-socket file.
function clearStaleSocket(socketPath) {
  let stat;
  try {
    stat = fs.lstatSync(socketPath);
  } catch {
    return Promise.resolve();
  }
  if (!stat.isSocket()) return Promise.reject(new Error(`${socketPath} exists and is not a socket`));
  return new Promise((resolve, reject) => {
    const probe = net.connect(socketPath);
    probe.on('connect', () => {
      probe.destroy();
      reject(new Error(`another process is listening on ${socketPath}`));
    });
    probe.on('error', () => {
      fs.unlinkSync(socketPath);
      resolve();
    });
  });
}

function currentPpid() {
  // process.ppid is a snapshot taken at start; /proc tells the truth after re-parenting.
  try {
    return Number(fs.readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')[1]);
  } catch {
    return process.ppid;
  }
}

function watchParent(onGone) {
  const startPpid = START_PPID;
  const watched = Number(process.env.PROTOGATE_PARENT_PID || startPpid);
  const timer = setInterval(() => {
    if (watched === startPpid && currentPpid() !== startPpid) return onGone(`parent process ${startPpid} exited`);
    try {
      process.kill(watched, 0);
    } catch (err) {
      if (err.code === 'ESRCH') onGone(`parent process ${watched} exited`);
    }
  }, 1000);
  timer.unref();
}

async function main() {
  const address = process.env.PROTOGATE_RUNNER_ADDRESS;
  if (!address) {
    console.error('plugin runner: PROTOGATE_RUNNER_ADDRESS is not set');
    process.exit(2);
  }
  // Handlers first: a supervisor may send SIGTERM as soon as it reads the "listening" line.
  let stop = null;
  let pendingStop = null;
  const requestStop = (reason) => (stop ? stop(reason) : (pendingStop = pendingStop || reason));
  process.on('SIGTERM', () => requestStop('SIGTERM'));
  process.on('SIGINT', () => requestStop('SIGINT'));
  watchParent(requestStop);

  const socketPath = socketPathOf(address);
  // Bodies travel inside messages: allow more than gRPC's 4 MiB default (the gateway caps bodies itself).
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 64 * 1024 * 1024 });
  server.addService(pluginV1.PluginRunner.service, service);
  const health = new HealthImplementation({ '': 'NOT_SERVING', [SERVICE_NAME]: 'NOT_SERVING' });
  health.addToServer(server);

  if (socketPath) {
    fs.mkdirSync(path.dirname(path.resolve(socketPath)), { recursive: true, mode: 0o700 });
    await clearStaleSocket(socketPath);
  }
  // The umask closes the window between bind() and chmod() in which others could connect.
  const previousUmask = process.umask(0o177);
  let port;
  try {
    port = await new Promise((resolve, reject) => {
      server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
    });
  } finally {
    process.umask(previousUmask);
  }
  if (socketPath) fs.chmodSync(socketPath, 0o600);
  health.setStatus('', 'SERVING');
  health.setStatus(SERVICE_NAME, 'SERVING');
  const bound = socketPath ? `unix:${socketPath}` : `${address.slice(0, address.lastIndexOf(':'))}:${port}`;
  console.log(`plugin runner listening on ${bound}`);

  let stopping = false;
  stop = (reason) => {
    if (stopping) return;
    stopping = true;
    console.log(`plugin runner stopping: ${reason}`);
    health.setStatus('', 'NOT_SERVING');
    health.setStatus(SERVICE_NAME, 'NOT_SERVING');
    // Every call received is answered already (plugins here never wait): end the Calls streams now, or
    // tryShutdown would wait for the gateway to close them.
    for (const call of streams) call.end();
    streams.clear();
    const finish = () => {
      if (socketPath) fs.rmSync(socketPath, { force: true });
      console.log('plugin runner stopped');
      process.exit(0);
    };
    setTimeout(() => {
      server.forceShutdown();
      finish();
    }, 2000).unref();
    server.tryShutdown(finish);
  };
  if (pendingStop) stop(pendingStop);
}

main().catch((err) => {
  console.error(`plugin runner: ${err.stack || err}`);
  process.exit(1);
});
