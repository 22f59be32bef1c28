#!lua name=rethinker_buffer
--[[
Server-side logic of the SSR buffer (Redis Functions, Redis >= 7.0).

Loaded by services/buffer/library.py, which replaces __LIB_VERSION__ by a hash of this file and
reloads the library when the running server holds another version (``rtk_version``).

Three groups of functions, each touching only keys of one hash tag (Cluster-ready):
  {s} trajectory store : rtk_add_group, rtk_sample, rtk_get, rtk_sizes, rtk_stats
  {q} prompt queue     : rtk_q_publish, rtk_q_ack, rtk_q_release, rtk_q_stats
  {w} registry         : rtk_w_heartbeat, rtk_w_unregister, rtk_w_live

Store layout (KEYS of every store function, in this order; see STORE_KEYS in library.py):
  1 samples   hash sid -> codec bytes of the Sample as the rollout server sent it
  2 smeta     hash sid -> cmsgpack {adv, w, ver, ts, pool, bucket, pos, gid, base}
  3 groups    hash gid -> codec bytes of the Group without its samples (holds the task + images)
  4 gmeta     hash gid -> cmsgpack {seq, sids, advs, created}
  5 gorder    list of gids, oldest first (capacity eviction)
  6 counters  hash of monotonic counters and histograms
  7..12       pools: fresh effective (f), replay (r), fresh zero-advantage (z); each pool is
              a `cnt` hash bucket -> count and a `slot` hash "bucket:pos" -> sid (dense per bucket)
  13 fifo     zset sid -> seq: replay FIFO order
  14 byver    zset sid -> policy version of every pooled sample (staleness eviction)
  15 series   list of cmsgpack points (time series for the stats endpoint)
  16 vser     hash version -> cmsgpack per-policy-version counts
  17 vidx     zset version -> version (bounds vser)
  18 meta     hash: learner_version, last_point_t
  19 request  (rtk_sample only) string key caching a batch for idempotent retries

Sampling: a pool is split in power-of-two buckets by weight w = m * 2^e (frexp, m in [0.5,1)):
bucket e holds weights in [2^(e-1), 2^e).  A weighted draw picks bucket e with probability
count_e * 2^e / sum, a uniform slot in it, and accepts with probability w / 2^e (>= 1/2); the
result is exactly P(j) proportional to w_j, in expected O(1) Redis calls per draw (the bucket scan
is over the handful of non-empty buckets, independent of the store size).
]]

local VERSION = '__LIB_VERSION__'
local MAX_TRIALS = 64
local ZERO_TOL = 1e-12
local W_MIN, W_MAX = 1e-300, 1e300
local ADV_BINS, ADV_LO, ADV_HI = 20, -2.5, 2.5

local K_SAMPLES, K_SMETA, K_GROUPS, K_GMETA, K_GORDER, K_COUNTERS = 1, 2, 3, 4, 5, 6
local K_FCNT, K_FSLOT, K_RCNT, K_RSLOT, K_ZCNT, K_ZSLOT = 7, 8, 9, 10, 11, 12
local K_FIFO, K_BYVER, K_SERIES, K_VSER, K_VIDX, K_META, K_REQ = 13, 14, 15, 16, 17, 18, 19

-- meta fields
local M_ADV, M_W, M_VER, M_TS, M_POOL, M_E, M_POS, M_GID, M_BASE = 1, 2, 3, 4, 5, 6, 7, 8, 9

-- --------------------------------------------------------------------------- helpers

local function fmt(x)
  return string.format('%.17g', x)
end

local function bad(msg)
  return redis.error_reply('RTK_BADARG ' .. msg)
end

local function finite(v)
  return v ~= nil and v == v and v ~= math.huge and v ~= -math.huge
end

local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function clampw(w)
  if not finite(w) or w > W_MAX then return W_MAX end
  if w < W_MIN then return W_MIN end
  return w
end

local function pools_of(KEYS)
  return {
    f = {code = 'f', cnt = KEYS[K_FCNT], slot = KEYS[K_FSLOT]},
    r = {code = 'r', cnt = KEYS[K_RCNT], slot = KEYS[K_RSLOT]},
    z = {code = 'z', cnt = KEYS[K_ZCNT], slot = KEYS[K_ZSLOT]},
  }
end

-- A per-call cache of sample metadata; dirty entries are written once at the end.
local function meta_cache(smeta_key)
  local c = {data = {}, dirty = {}, order = {}}
  function c.get(sid)
    local m = c.data[sid]
    if m == nil then
      local raw = redis.call('HGET', smeta_key, sid)
      if not raw then return nil end
      m = cmsgpack.unpack(raw)
      c.data[sid] = m
    end
    return m
  end
  function c.put(sid, m)
    c.data[sid] = m
    if not c.dirty[sid] then
      c.dirty[sid] = true
      c.order[#c.order + 1] = sid
    end
  end
  function c.drop(sid)
    c.data[sid] = nil
    c.dirty[sid] = nil
  end
  function c.flush()
    local args = {}
    for _, sid in ipairs(c.order) do
      if c.dirty[sid] then
        args[#args + 1] = sid
        args[#args + 1] = cmsgpack.pack(c.data[sid])
        if #args >= 512 then
          redis.call('HSET', smeta_key, unpack(args))
          args = {}
        end
      end
    end
    if #args > 0 then redis.call('HSET', smeta_key, unpack(args)) end
    c.dirty, c.order = {}, {}
  end
  return c
end

local function pool_add(P, M, sid, m, w)
  w = clampw(w)
  local _, e = math.frexp(w)
  local c = redis.call('HINCRBY', P.cnt, e, 1)
  redis.call('HSET', P.slot, e .. ':' .. c, sid)
  m[M_W], m[M_POOL], m[M_E], m[M_POS] = w, P.code, e, c
  M.put(sid, m)
end

-- Remove m (of sample sid) from its pool P: the bucket's last slot moves into the hole.
local function pool_del(P, M, sid, m)
  local e, pos = m[M_E], m[M_POS]
  local c = tonumber(redis.call('HGET', P.cnt, e))
  if c == nil then return e end  -- defensive: never happens on a consistent store
  if pos ~= c then
    local last = redis.call('HGET', P.slot, e .. ':' .. c)
    redis.call('HSET', P.slot, e .. ':' .. pos, last)
    local lm = M.get(last)
    lm[M_POS] = pos
    M.put(last, lm)
  end
  redis.call('HDEL', P.slot, e .. ':' .. c)
  if c <= 1 then redis.call('HDEL', P.cnt, e) else redis.call('HINCRBY', P.cnt, e, -1) end
  m[M_POOL], m[M_E], m[M_POS] = '-', 0, 0
  M.put(sid, m)
  return e
end

local function pool_size(P)
  local vals = redis.call('HVALS', P.cnt)
  local n = 0
  for _, v in ipairs(vals) do n = n + tonumber(v) end
  return n
end

-- In-script view of a pool's buckets: arrays es (exponent), cs (count), with totals.
local function load_state(P)
  local flat = redis.call('HGETALL', P.cnt)
  local st = {P = P, es = {}, cs = {}, n = 0, wt = 0}
  for i = 1, #flat, 2 do
    local e, c = tonumber(flat[i]), tonumber(flat[i + 1])
    st.es[#st.es + 1] = e
    st.cs[#st.cs + 1] = c
    st.n = st.n + c
    st.wt = st.wt + math.ldexp(c, e)
  end
  return st
end

local function state_dec(st, e)
  for i, be in ipairs(st.es) do
    if be == e then
      st.cs[i] = st.cs[i] - 1
      st.n = st.n - 1
      st.wt = st.wt - math.ldexp(1, e)
      return
    end
  end
end

local function pick_bucket(st, weighted)
  local total = weighted and st.wt or st.n
  local u = math.random() * total
  local acc, last = 0, nil
  for i, c in ipairs(st.cs) do
    if c > 0 then
      last = i
      acc = acc + (weighted and math.ldexp(c, st.es[i]) or c)
      if u < acc then return i end
    end
  end
  return last
end

-- One draw from a pool: weighted (P ~ w) or uniform.  Returns sid, meta or nil.
local function pick(st, M, weighted)
  if st.n <= 0 then return nil end
  for _ = 1, MAX_TRIALS do
    local i = pick_bucket(st, weighted)
    if i == nil then return nil end
    local e = st.es[i]
    local pos = math.random(1, st.cs[i])
    local sid = redis.call('HGET', st.P.slot, e .. ':' .. pos)
    local m = sid and M.get(sid)
    if m then
      if not weighted or math.random() < m[M_W] / math.ldexp(1, e) then
        return sid, m
      end
    end
  end
  return nil
end

local function hincr(key, field, by)
  if by ~= 0 then redis.call('HINCRBY', key, field, by) end
end

local function adv_bin(a)
  local i = math.floor((a - ADV_LO) / (ADV_HI - ADV_LO) * ADV_BINS)
  if i < 0 then i = 0 end
  if i >= ADV_BINS then i = ADV_BINS - 1 end
  return i
end

local POINT_FIELDS = {'groups', 'samples', 'eff_samples', 'zero_samples', 'eff_groups', 'allc_groups',
  'allw_groups', 'draws', 'draws_fresh', 'draws_replay', 'stale_evicted', 'cap_evicted_samples'}

-- Append a time-series point when the last one is older than `interval` seconds.
local function maybe_point(KEYS, interval, window, t)
  local last = tonumber(redis.call('HGET', KEYS[K_META], 'last_point_t') or '0')
  if t - last < interval then return end
  redis.call('HSET', KEYS[K_META], 'last_point_t', fmt(t))
  local vals = redis.call('HMGET', KEYS[K_COUNTERS], unpack(POINT_FIELDS))
  local pt = {t}
  for i = 1, #POINT_FIELDS do pt[#pt + 1] = tonumber(vals[i] or '0') end
  local P = pools_of(KEYS)
  pt[#pt + 1] = pool_size(P.f)
  pt[#pt + 1] = pool_size(P.r)
  pt[#pt + 1] = pool_size(P.z)
  pt[#pt + 1] = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '-1')
  redis.call('RPUSH', KEYS[K_SERIES], cmsgpack.pack(pt))
  redis.call('LTRIM', KEYS[K_SERIES], -window, -1)
end

-- Remove a stored sample from whatever pool holds it (for eviction).
local function unpool(KEYS, P, M, sid, m)
  local code = m[M_POOL]
  if code == 'f' or code == 'r' or code == 'z' then
    pool_del(P[code], M, sid, m)
    redis.call('ZREM', KEYS[K_BYVER], sid)
    if code == 'r' then redis.call('ZREM', KEYS[K_FIFO], sid) end
    return code
  end
  return nil
end

-- --------------------------------------------------------------------------- store: add_group

--[[ ARGV: gid, header, n, std_normalize(0|1), adv_eps, alpha, capacity, series_interval,
           stats_window, category, source, group_version,
           then n times: sid, data, reward, version, correct(0|1)
Returns {stored(0|1), n_effective, adv_1, ..., adv_n} (advantages as strings). ]]
local function add_group(KEYS, ARGV)
  local gid, header = ARGV[1], ARGV[2]
  local n = tonumber(ARGV[3])
  if gid == nil or gid == '' then return bad('group id is empty') end
  if n == nil or n < 1 or n ~= math.floor(n) then return bad('group ' .. gid .. ': n must be a positive integer, got ' .. tostring(ARGV[3])) end
  if #ARGV ~= 12 + 5 * n then return bad('group ' .. gid .. ': expected ' .. (12 + 5 * n) .. ' arguments, got ' .. #ARGV) end
  local std_norm = ARGV[4] == '1'
  local adv_eps, alpha = tonumber(ARGV[5]), tonumber(ARGV[6])
  local capacity, interval, window = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local category, source, gver = ARGV[10], ARGV[11], tonumber(ARGV[12])
  if not (finite(adv_eps) and finite(alpha) and alpha > 0 and capacity and capacity >= 1 and gver) then
    return bad('group ' .. gid .. ': bad numeric settings')
  end

  -- idempotent by group id
  local existing = redis.call('HGET', KEYS[K_GMETA], gid)
  if existing then
    local gm = cmsgpack.unpack(existing)
    local out = {0, 0}
    for _, a in ipairs(gm[3]) do
      out[#out + 1] = fmt(a)
      if a ~= 0 then out[2] = out[2] + 1 end
    end
    redis.call('HINCRBY', KEYS[K_COUNTERS], 'dup_groups', 1)
    return out
  end

  -- validate everything before the first write
  local sids, datas, rewards, vers, corrects, seen = {}, {}, {}, {}, {}, {}
  for i = 1, n do
    local b = 12 + 5 * (i - 1)
    local sid, data = ARGV[b + 1], ARGV[b + 2]
    local r, v = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    if sid == '' then return bad('group ' .. gid .. ': sample ' .. i .. ' has an empty id') end
    if seen[sid] then return bad('group ' .. gid .. ': sample id ' .. sid .. ' appears twice') end
    seen[sid] = true
    if not finite(r) then return bad('group ' .. gid .. ': sample ' .. sid .. ' reward is not a finite number: ' .. tostring(ARGV[b + 3])) end
    if v == nil or v ~= math.floor(v) then return bad('group ' .. gid .. ': sample ' .. sid .. ' policy version is not an integer') end
    if redis.call('HEXISTS', KEYS[K_SAMPLES], sid) == 1 then
      return bad('group ' .. gid .. ': sample id ' .. sid .. ' is already stored (in another group)')
    end
    sids[i], datas[i], rewards[i], vers[i], corrects[i] = sid, data, r, v, ARGV[b + 5] == '1'
  end

  -- advantages: A = r - mean (optionally / (std + eps), unbiased std)
  local sum = 0
  for i = 1, n do sum = sum + rewards[i] end
  local mean = sum / n
  local var = 0
  for i = 1, n do var = var + (rewards[i] - mean) ^ 2 end
  local std = n > 1 and math.sqrt(var / (n - 1)) or 0
  local advs, n_eff = {}, 0
  local n_correct = 0
  for i = 1, n do
    local d = rewards[i] - mean
    if math.abs(d) <= ZERO_TOL * math.max(1, math.abs(mean)) then d = 0 end
    if d ~= 0 and std_norm then d = d / (std + adv_eps) end
    advs[i] = d
    if d ~= 0 then n_eff = n_eff + 1 end
    if corrects[i] then n_correct = n_correct + 1 end
  end

  -- writes
  local C = KEYS[K_COUNTERS]
  local t = now_s()
  local seq = redis.call('HINCRBY', C, 'group_seq', 1)
  redis.call('HSET', KEYS[K_GROUPS], gid, header)
  redis.call('HSET', KEYS[K_GMETA], gid, cmsgpack.pack({seq, sids, advs, t, category, source}))
  redis.call('RPUSH', KEYS[K_GORDER], gid)
  local P = pools_of(KEYS)
  local M = meta_cache(KEYS[K_SMETA])
  local sargs, zargs = {}, {}
  for i = 1, n do
    local sid, a = sids[i], advs[i]
    sargs[#sargs + 1] = sid
    sargs[#sargs + 1] = datas[i]
    local base = (a ~= 0) and clampw(math.abs(a) ^ alpha) or 0
    local m = {a, 0, vers[i], 0, '-', 0, 0, gid, base}
    if a ~= 0 then
      pool_add(P.f, M, sid, m, base)
      hincr(C, 'ah:' .. adv_bin(a), 1)
    else
      pool_add(P.z, M, sid, m, 1)
    end
    zargs[#zargs + 1] = vers[i]
    zargs[#zargs + 1] = sid
  end
  redis.call('HSET', KEYS[K_SAMPLES], unpack(sargs))
  redis.call('ZADD', KEYS[K_BYVER], unpack(zargs))
  M.flush()

  -- counters and histograms
  local allc = (n_correct == n) and 1 or 0
  local allw = (n_correct == 0) and 1 or 0
  local effg = (n_eff > 0) and 1 or 0
  hincr(C, 'groups', 1)
  hincr(C, 'samples', n)
  hincr(C, 'stored', n)
  hincr(C, 'eff_samples', n_eff)
  hincr(C, 'zero_samples', n - n_eff)
  hincr(C, 'eff_groups', effg)
  hincr(C, 'allc_groups', allc)
  hincr(C, 'allw_groups', allw)
  hincr(C, 'ah:zero', n - n_eff)
  hincr(C, 'cat:' .. category, 1)
  hincr(C, 'cate:' .. category, effg)
  hincr(C, 'src:' .. source, 1)
  hincr(C, 'srce:' .. source, effg)

  -- per policy version (the "vanishing advantages" curve over training steps)
  local vraw = redis.call('HGET', KEYS[K_VSER], gver)
  local vs = vraw and cmsgpack.unpack(vraw) or {0, 0, 0, 0, 0, 0}
  vs[1], vs[2], vs[3] = vs[1] + 1, vs[2] + effg, vs[3] + n
  vs[4], vs[5], vs[6] = vs[4] + n_eff, vs[5] + allc, vs[6] + allw
  redis.call('HSET', KEYS[K_VSER], gver, cmsgpack.pack(vs))
  if not vraw then
    redis.call('ZADD', KEYS[K_VIDX], gver, gver)
    while redis.call('ZCARD', KEYS[K_VIDX]) > window do
      local old = redis.call('ZPOPMIN', KEYS[K_VIDX])
      redis.call('HDEL', KEYS[K_VSER], old[1])
    end
  end

  -- capacity: evict oldest groups (never the one just added)
  local stored = tonumber(redis.call('HGET', C, 'stored'))
  while stored > capacity do
    local old = redis.call('LINDEX', KEYS[K_GORDER], 0)
    if (not old) or old == gid then break end
    redis.call('LPOP', KEYS[K_GORDER])
    local raw = redis.call('HGET', KEYS[K_GMETA], old)
    if raw then
      local gm = cmsgpack.unpack(raw)
      local osids = gm[2]
      for _, sid in ipairs(osids) do
        local m = M.get(sid)
        if m then
          local code = unpool(KEYS, P, M, sid, m)
          if code == 'f' then hincr(C, 'cap_evicted_fresh', 1) end
        end
        M.drop(sid)
      end
      M.flush()
      redis.call('HDEL', KEYS[K_SMETA], unpack(osids))
      redis.call('HDEL', KEYS[K_SAMPLES], unpack(osids))
      redis.call('HDEL', KEYS[K_GMETA], old)
      redis.call('HDEL', KEYS[K_GROUPS], old)
      hincr(C, 'cap_evicted_samples', #osids)
      hincr(C, 'cap_evicted_groups', 1)
      stored = redis.call('HINCRBY', C, 'stored', -#osids)
    end
  end
  M.flush()
  maybe_point(KEYS, interval, window, t)

  local out = {1, n_eff}
  for i = 1, n do out[#out + 1] = fmt(advs[i]) end
  return out
end

-- --------------------------------------------------------------------------- store: sample

-- Result of a batch: header, draws (sid, pool, ts, ...), items (sid, data, adv, ver, gid, ...),
-- groups (gid, header, ...).  `rec` is {header, draws}; items are (re-)read here.
local function batch_reply(KEYS, rec)
  local header, draws = rec[1], rec[2]
  local items, groups, seen, gseen = {}, {}, {}, {}
  for i = 1, #draws, 3 do
    local sid = draws[i]
    if not seen[sid] then
      seen[sid] = true
      local data = redis.call('HGET', KEYS[K_SAMPLES], sid)
      local raw = redis.call('HGET', KEYS[K_SMETA], sid)
      if data and raw then
        local m = cmsgpack.unpack(raw)
        items[#items + 1] = sid
        items[#items + 1] = data
        items[#items + 1] = fmt(m[M_ADV])
        items[#items + 1] = m[M_VER]
        items[#items + 1] = m[M_GID]
        if not gseen[m[M_GID]] then
          gseen[m[M_GID]] = true
          local g = redis.call('HGET', KEYS[K_GROUPS], m[M_GID])
          if g then
            groups[#groups + 1] = m[M_GID]
            groups[#groups + 1] = g
          end
        end
      end
    end
  end
  return {header, draws, items, groups}
end

--[[ ARGV: n, mode, learner_version, staleness_bound, reuse_cap, replay_capacity, replay_eps,
           seed, request_ttl_s, series_interval, stats_window
Returns {{n_fresh, n_replay, fresh_avail, replay_avail, zero_avail}, draws, items, groups}. ]]
local function sample(KEYS, ARGV)
  local n, mode, cur = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
  local bound, cap, rcap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local eps, seed, ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local interval, window = tonumber(ARGV[10]), tonumber(ARGV[11])
  if not (n and n >= 0 and cur and bound and bound >= 0 and cap and cap >= 1 and rcap and rcap >= 0
          and finite(eps) and eps >= 0 and seed and ttl and interval and window) then
    return bad('sample: bad arguments')
  end
  if mode ~= 'ssr' and mode ~= 'filter' and mode ~= 'grpo' then
    return bad('sample: mode must be ssr, filter or grpo, got ' .. tostring(mode))
  end
  local req = KEYS[K_REQ]
  local prev = redis.call('GET', req)
  if prev then return batch_reply(KEYS, cmsgpack.unpack(prev)) end

  math.randomseed(seed)
  local C = KEYS[K_COUNTERS]
  local P = pools_of(KEYS)
  local M = meta_cache(KEYS[K_SMETA])
  local t = now_s()
  local lv = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '-1')
  if cur > lv then redis.call('HSET', KEYS[K_META], 'learner_version', cur) end

  -- staleness: evict every pooled response whose version lags `cur` by more than `bound`
  local stale = redis.call('ZRANGEBYSCORE', KEYS[K_BYVER], '-inf', '(' .. (cur - bound))
  local n_stale, n_stale_fresh = 0, 0
  for _, sid in ipairs(stale) do
    local m = M.get(sid)
    if m then
      local code = unpool(KEYS, P, M, sid, m)
      if code then
        m[M_POOL] = 'x'
        M.put(sid, m)
        n_stale = n_stale + 1
        if code == 'f' then n_stale_fresh = n_stale_fresh + 1 end
      end
    else
      redis.call('ZREM', KEYS[K_BYVER], sid)
    end
  end
  hincr(C, 'stale_evicted', n_stale)
  hincr(C, 'stale_evicted_fresh', n_stale_fresh)

  local fst, rst, zst = load_state(P.f), load_state(P.r), load_state(P.z)
  local header = {0, 0, fst.n, rst.n, zst.n}
  local draws = {}
  local drawn_fresh, drawn_order = {}, {}
  local n_retired = 0

  local function record(sid, m, code)
    m[M_TS] = m[M_TS] + 1
    M.put(sid, m)
    draws[#draws + 1] = sid
    draws[#draws + 1] = code
    draws[#draws + 1] = m[M_TS]
    hincr(C, 'ru:' .. m[M_TS], 1)
    if code == 'r' then header[2] = header[2] + 1 else header[1] = header[1] + 1 end
  end

  local function retire(sid, m)
    m[M_POOL] = 't'
    M.put(sid, m)
    redis.call('ZREM', KEYS[K_BYVER], sid)
    n_retired = n_retired + 1
  end

  -- take a drawn item out of its fresh pool (filter/grpo draw without replacement)
  local function take(st, sid, m)
    local e = pool_del(st.P, M, sid, m)
    state_dec(st, e)
    m[M_POOL] = 'd'  -- drawn this call; placed at the end
    if not drawn_fresh[sid] then
      drawn_fresh[sid] = true
      drawn_order[#drawn_order + 1] = sid
    end
  end

  if mode == 'ssr' then
    local k = n
    if fst.n < n and rst.n > 0 then k = fst.n end
    for _ = 1, k do
      local sid, m = pick(fst, M, true)
      if not sid then break end
      record(sid, m, 'f')
      if not drawn_fresh[sid] then
        drawn_fresh[sid] = true
        drawn_order[#drawn_order + 1] = sid
      end
      if m[M_TS] >= cap then
        state_dec(fst, pool_del(P.f, M, sid, m))
        retire(sid, m)
      end
    end
    while #draws / 3 < n do
      local sid, m, code
      if rst.n > 0 then
        sid, m = pick(rst, M, true)
        code = 'r'
      elseif fst.n > 0 then
        sid, m = pick(fst, M, true)
        code = 'f'
      end
      if not sid then break end
      record(sid, m, code)
      if code == 'f' and not drawn_fresh[sid] then
        drawn_fresh[sid] = true
        drawn_order[#drawn_order + 1] = sid
      end
      if m[M_TS] >= cap then
        local st = (code == 'r') and rst or fst
        state_dec(st, pool_del(st.P, M, sid, m))
        if code == 'r' then redis.call('ZREM', KEYS[K_FIFO], sid) end
        retire(sid, m)
      end
    end
  elseif mode == 'filter' then
    while #drawn_order < n and fst.n > 0 do
      local sid, m = pick(fst, M, false)
      if not sid then break end
      take(fst, sid, m)
      record(sid, m, 'f')
    end
    -- too few effective responses: repeat them (uniformly, in drawn order) to fill the batch
    local progress = #drawn_order > 0
    while #draws / 3 < n and progress do
      progress = false
      for _, sid in ipairs(drawn_order) do
        if #draws / 3 >= n then break end
        local m = M.get(sid)
        if m[M_TS] < cap then
          record(sid, m, 'f')
          progress = true
        end
      end
    end
  else -- grpo: everything fresh, effective or not, uniformly without replacement
    while #draws / 3 < n and (fst.n + zst.n) > 0 do
      local st = (math.random() * (fst.n + zst.n) < fst.n) and fst or zst
      local sid, m = pick(st, M, false)
      if not sid then break end
      take(st, sid, m)
      record(sid, m, st.P.code == 'z' and 'z' or 'f')
    end
  end

  -- drawn fresh responses become replay candidates (FIFO, bounded); zero-advantage ones retire
  local seqc = 0
  for _, sid in ipairs(drawn_order) do
    local m = M.get(sid)
    local code = m[M_POOL]
    if code == 'f' or code == 'd' then
      if code == 'f' then pool_del(P.f, M, sid, m) end
      if m[M_ADV] ~= 0 and rcap > 0 and m[M_TS] < cap then
        pool_add(P.r, M, sid, m, m[M_BASE] + eps)
        seqc = redis.call('HINCRBY', C, 'replay_seq', 1)
        redis.call('ZADD', KEYS[K_FIFO], seqc, sid)
        hincr(C, 'moved_to_replay', 1)
      else
        retire(sid, m)
      end
    end
  end
  local over = redis.call('ZCARD', KEYS[K_FIFO]) - rcap
  if over > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[K_FIFO], over)
    for i = 1, #popped, 2 do
      local sid = popped[i]
      local m = M.get(sid)
      if m and m[M_POOL] == 'r' then
        pool_del(P.r, M, sid, m)
        m[M_POOL] = 't'
        M.put(sid, m)
        redis.call('ZREM', KEYS[K_BYVER], sid)
      end
    end
    hincr(C, 'replay_evicted', #popped / 2)
  end
  M.flush()

  hincr(C, 'retired', n_retired)
  hincr(C, 'draws', #draws / 3)
  hincr(C, 'draws_fresh', header[1])
  hincr(C, 'draws_replay', header[2])
  hincr(C, 'sample_calls', 1)
  if #draws == 0 then hincr(C, 'empty_sample_calls', 1) end
  maybe_point(KEYS, interval, window, t)

  local rec = {header, draws}
  if ttl > 0 then redis.call('SET', req, cmsgpack.pack(rec), 'EX', ttl) end
  return batch_reply(KEYS, rec)
end

-- --------------------------------------------------------------------------- store: reads

-- ARGV: kind ('sample' | 'group'), id.  sample -> {data, adv, ver, ts, pool, gid} or {};
-- group -> {header, created, n, sid_1, data_1, adv_1, ver_1, ts_1, pool_1, ...} or {}.
local function get(KEYS, ARGV)
  local kind, id = ARGV[1], ARGV[2]
  local function one(sid)
    local data = redis.call('HGET', KEYS[K_SAMPLES], sid)
    local raw = redis.call('HGET', KEYS[K_SMETA], sid)
    if not (data and raw) then return nil end
    local m = cmsgpack.unpack(raw)
    return {data, fmt(m[M_ADV]), m[M_VER], m[M_TS], m[M_POOL], m[M_GID]}
  end
  if kind == 'sample' then
    return one(id) or {}
  end
  local h = redis.call('HGET', KEYS[K_GROUPS], id)
  local raw = redis.call('HGET', KEYS[K_GMETA], id)
  if not (h and raw) then return {} end
  local gm = cmsgpack.unpack(raw)
  local out = {h, fmt(gm[4]), #gm[2]}
  for _, sid in ipairs(gm[2]) do
    local s = one(sid)
    if s then
      out[#out + 1] = sid
      for _, v in ipairs(s) do out[#out + 1] = v end
    end
  end
  return out
end

-- Sizes of the pools: {fresh, replay, zero, stored, groups}.
local function sizes(KEYS, ARGV)
  local P = pools_of(KEYS)
  return {pool_size(P.f), pool_size(P.r), pool_size(P.z),
          tonumber(redis.call('HGET', KEYS[K_COUNTERS], 'stored') or '0'),
          redis.call('HLEN', KEYS[K_GROUPS])}
end

-- ARGV: learner_version (-1: use the store's), max_lag.
-- Returns {sizes, counters flat, staleness {lag, count...}, series, vser flat, meta flat, version, now}.
local function stats(KEYS, ARGV)
  local cur = tonumber(ARGV[1])
  local maxlag = tonumber(ARGV[2])
  if cur == nil or cur < 0 then
    cur = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '0')
  end
  local stale = {}
  stale[#stale + 1] = 'ahead'
  stale[#stale + 1] = redis.call('ZCOUNT', KEYS[K_BYVER], '(' .. cur, '+inf')
  for lag = 0, maxlag do
    stale[#stale + 1] = tostring(lag)
    stale[#stale + 1] = redis.call('ZCOUNT', KEYS[K_BYVER], cur - lag, cur - lag)
  end
  stale[#stale + 1] = 'older'
  stale[#stale + 1] = redis.call('ZCOUNT', KEYS[K_BYVER], '-inf', '(' .. (cur - maxlag))
  return {sizes(KEYS, ARGV), redis.call('HGETALL', KEYS[K_COUNTERS]), stale,
          redis.call('LRANGE', KEYS[K_SERIES], 0, -1), redis.call('HGETALL', KEYS[K_VSER]),
          redis.call('HGETALL', KEYS[K_META]), cur, fmt(now_s())}
end

-- --------------------------------------------------------------------------- prompt queue

--[[ KEYS: stream, published-hash per distinct epoch...
ARGV: group, max_inflight, force(0|1), count, then count times: key_index, prompt_id, task_id, payload.
Returns {published, {duplicate task ids}, {deferred task ids}}. ]]
local function q_publish(KEYS, ARGV)
  local max_inflight, force, count = tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4])
  if not (max_inflight and count) or #ARGV ~= 4 + 4 * count then return bad('publish: bad arguments') end
  local stream = KEYS[1]
  local inflight = redis.call('XLEN', stream)
  local published, dups, deferred = 0, {}, {}
  for i = 1, count do
    local b = 4 + 4 * (i - 1)
    local kidx, pid, tid, payload = tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
    local pub = KEYS[kidx]
    if pub == nil then return bad('publish: bad key index') end
    if redis.call('HEXISTS', pub, pid) == 1 then
      dups[#dups + 1] = tid
    elseif (not force) and inflight >= max_inflight then
      deferred[#deferred + 1] = tid
    else
      redis.call('XADD', stream, '*', 't', tid, 'd', payload, 'r', 0)
      redis.call('HSET', pub, pid, tid)
      inflight = inflight + 1
      published = published + 1
    end
  end
  return {published, dups, deferred}
end

-- KEYS: stream; ARGV: group, entry id.  1 when the entry was pending and is now done.
local function q_ack(KEYS, ARGV)
  local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  if n == 1 then redis.call('XDEL', KEYS[1], ARGV[2]) end
  return n
end

-- KEYS: stream; ARGV: group, entry id.  Re-queues a pending entry at once (new entry id).
local function q_release(KEYS, ARGV)
  local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  if n ~= 1 then return 0 end
  local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  if #e == 0 then return 0 end
  local f = e[1][2]
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  redis.call('XADD', KEYS[1], '*', 't', fields['t'], 'd', fields['d'], 'r', (tonumber(fields['r']) or 0) + 1)
  return 1
end

-- KEYS: stream; ARGV: group.  {inflight (entries not acked), pending (delivered, not acked)}.
local function q_stats(KEYS, ARGV)
  local inflight = redis.call('XLEN', KEYS[1])
  local pending = 0
  local ok = redis.pcall('XPENDING', KEYS[1], ARGV[1])
  if type(ok) == 'table' and ok.err == nil then pending = tonumber(ok[1]) or 0 end
  return {inflight, pending}
end

-- --------------------------------------------------------------------------- registry

-- KEYS: servers hash, alive zset; ARGV: id, info json, ttl_s.
local function w_heartbeat(KEYS, ARGV)
  local ttl = tonumber(ARGV[3])
  if not (ttl and ttl > 0) then return bad('heartbeat: ttl must be > 0') end
  local t = now_s()
  redis.call('ZADD', KEYS[2], fmt(t + ttl), ARGV[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return fmt(t)
end

local function w_unregister(KEYS, ARGV)
  redis.call('ZREM', KEYS[2], ARGV[1])
  return redis.call('HDEL', KEYS[1], ARGV[1])
end

-- KEYS: servers hash, alive zset.  Prunes expired registrations; returns {id, info, expires_at...}.
local function w_live(KEYS, ARGV)
  local t = fmt(now_s())
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', t)
  for _, id in ipairs(dead) do redis.call('HDEL', KEYS[1], id) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', t) end
  local live = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local out = {}
  for i = 1, #live, 2 do
    local info = redis.call('HGET', KEYS[1], live[i])
    if info then
      out[#out + 1] = live[i]
      out[#out + 1] = info
      out[#out + 1] = live[i + 1]
    end
  end
  return out
end

-- --------------------------------------------------------------------------- registration

redis.register_function{function_name = 'rtk_version', callback = function() return VERSION end, flags = {'no-writes'}}
redis.register_function('rtk_add_group', add_group)
redis.register_function('rtk_sample', sample)
redis.register_function{function_name = 'rtk_get', callback = get, flags = {'no-writes'}}
redis.register_function{function_name = 'rtk_sizes', callback = sizes, flags = {'no-writes'}}
redis.register_function{function_name = 'rtk_stats', callback = stats, flags = {'no-writes'}}
redis.register_function('rtk_q_publish', q_publish)
redis.register_function('rtk_q_ack', q_ack)
redis.register_function('rtk_q_release', q_release)
redis.register_function{function_name = 'rtk_q_stats', callback = q_stats, flags = {'no-writes'}}
redis.register_function('rtk_w_heartbeat', w_heartbeat)
redis.register_function('rtk_w_unregister', w_unregister)
redis.register_function('rtk_w_live', w_live)
