'use strict'
// GET /users/:id served from rust-app's Redis cache by one Node.js process: the yardstick issue 16 compares
// rust-app with (Fastify 5, ioredis, @fastify/rate-limit on Redis, pino's JSON access log). scripts/bench-node
// starts it; nothing else depends on it.
//
// Environment:
//   PORT                   port to listen on (required), on HOST (default 127.0.0.1)
//   REDIS_URL              default redis://127.0.0.1:6379
//   TRUST_PROXY            addresses whose X-Forwarded-For names the client (default 127.0.0.1, as the bench
//                          runs rust-app with HTTP_TRUSTED_PROXIES=127.0.0.1); empty: the TCP peer is the client
//   RATE_LIMIT_MAX         requests per client IP per second before 429 (default 1000000: runs, never refuses)
//   RATE_LIMIT_NAMESPACE   prefix of the limiter's Redis keys (default bench-node-rl:)
//   CHECK_SESSION          0 (default): the service — limiter, then GET user:{id}, body returned as-is.
//                          1: the work rust-app does for the same request — limiter; the bearer session
//                          (GET session:{sha256(id)}, absolute lifetime checked, PEXPIRE for sliding expiry); the
//                          caller's cached record (GET user:{caller}); then GET user:{id}, answered as rust-app
//                          answers it (the whole record to its owner or an admin, the public profile to others).
//   SESSION_TTL_MS         sliding session TTL renewed by each use (default 86400000, rust-app's SESSION_TTL 24h)
//   SESSION_MAX_LIFETIME_S absolute session lifetime (default 604800, rust-app's SESSION_MAX_LIFETIME 7d)
//
// Logs: pino JSON through Fastify's logger, one line per request (its "request completed" line, with the request's
// method, URL and client added; the "incoming request" line is dropped), to stdout.

const crypto = require('node:crypto')
const Fastify = require('fastify')
const { LogController } = require('fastify')
const Redis = require('ioredis')

const settings = {
  host: process.env.HOST || '127.0.0.1',
  port: Number(process.env.PORT),
  redisUrl: process.env.REDIS_URL || 'redis://127.0.0.1:6379',
  trustProxy: process.env.TRUST_PROXY ?? '127.0.0.1',
  rateLimitMax: Number(process.env.RATE_LIMIT_MAX || 1000000),
  rateLimitNamespace: process.env.RATE_LIMIT_NAMESPACE || 'bench-node-rl:',
  checkSession: process.env.CHECK_SESSION === '1',
  sessionTtlMs: Number(process.env.SESSION_TTL_MS || 86400000),
  sessionMaxLifetimeS: Number(process.env.SESSION_MAX_LIFETIME_S || 604800)
}
if (!Number.isInteger(settings.port) || settings.port <= 0) {
  console.error('server.js: PORT must be a TCP port number')
  process.exit(2)
}

// rust-app's keys: the user id is a hash tag (crates/app/src/users/redis.rs, cache_key), the session key is the
// SHA-256 of the session id (crates/infra/src/redis/session.rs).
const userKey = (id) => `user:{${id}}`
const sessionKey = (token) => `session:${crypto.createHash('sha256').update(token).digest('hex')}`
const SESSION_ID = /^[0-9a-f]{64}$/

const problem = (status, code, title) =>
  JSON.stringify({ type: `urn:rust-app:problem:${code}`, title, status, code })
const NOT_FOUND = problem(404, 'user-not-found', 'User not found')
const UNAUTHENTICATED = problem(401, 'unauthenticated', 'Not signed in')

function refuse (reply, status, body) {
  return reply.code(status).type('application/problem+json').send(body)
}

function bearer (request) {
  const value = request.headers.authorization
  if (typeof value !== 'string') return null
  if (value.startsWith('Bearer ') || value.startsWith('bearer ')) return value.slice(7).trim()
  return null
}

// The signed-in caller's cached record, or null (no, unknown or expired session) — as rust-app's `authorize`.
async function caller (redis, request) {
  const token = bearer(request)
  if (token === null || !SESSION_ID.test(token)) return null
  const key = sessionKey(token)
  const raw = await redis.get(key)
  if (raw === null) return null
  let session
  try {
    session = JSON.parse(raw)
  } catch {
    return null
  }
  if (Math.floor(Date.now() / 1000) - session.started >= settings.sessionMaxLifetimeS) {
    await redis.del(key)
    return null
  }
  await redis.pexpire(key, settings.sessionTtlMs)
  const user = await redis.get(userKey(session.user))
  return user === null ? null : JSON.parse(user)
}

function view (user, viewer) {
  if (viewer.id === user.id || viewer.role === 'admin') {
    const { id, name, email, created_at: createdAt, updated_at: updatedAt } = user
    return JSON.stringify({ id, name, email, created_at: createdAt, updated_at: updatedAt })
  }
  return JSON.stringify({ id: user.id, name: user.name, created_at: user.created_at })
}

// Fastify logs two lines per request; rust-app one: keep the completion line, with what the incoming one said.
class OneLinePerRequest extends LogController {
  incomingRequest () {}

  requestCompleted (error, request, reply) {
    const line = { req: request, res: reply, responseTime: reply.elapsedTime }
    if (error) {
      reply.log.error({ ...line, err: error }, 'request errored')
    } else {
      reply.log.info(line, 'request completed')
    }
  }
}

async function main () {
  const redis = new Redis(settings.redisUrl)
  const app = Fastify({
    logger: { level: 'info' },
    logController: new OneLinePerRequest(),
    trustProxy: settings.trustProxy === '' ? false : settings.trustProxy
  })
  await app.register(require('@fastify/rate-limit'), {
    max: settings.rateLimitMax,
    timeWindow: 1000,
    redis,
    nameSpace: settings.rateLimitNamespace
  })

  app.get('/users/:id', async (request, reply) => {
    const id = request.params.id
    if (!settings.checkSession) {
      const body = await redis.get(userKey(id))
      if (body === null) return refuse(reply, 404, NOT_FOUND)
      return reply.type('application/json').send(body)
    }
    const viewer = await caller(redis, request)
    if (viewer === null) return refuse(reply, 401, UNAUTHENTICATED)
    const body = await redis.get(userKey(id))
    if (body === null) return refuse(reply, 404, NOT_FOUND)
    return reply.type('application/json').send(view(JSON.parse(body), viewer))
  })

  const stop = async () => {
    await app.close()
    await redis.quit()
    process.exit(0)
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
  await app.listen({ host: settings.host, port: settings.port })
}

main().catch((err) => {
  console.error('server.js:', err)
  process.exit(1)
})
