-- Shared by the wrk scripts: thread bookkeeping and one JSON summary line on stdout.
-- Loaded with dofile() from each script, in every Lua state wrk creates.

threads = {}
local next_id = 0

-- Each wrk thread gets a number (tid), used for per-connection names and namespaces.
function register(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- A monotonic clock in microseconds (LuaJIT ffi), nil when ffi is missing.
local ok, ffi = pcall(require, "ffi")
if ok then
   pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clock_id, bench_timespec *tp);
   ]])
   local ts = ffi.new("bench_timespec")
   function now_us()
      ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
   end
end

local function sum_of(name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (tonumber(thread:get(name)) or 0)
   end
   return total
end

local function percentile(sorted, p)
   if #sorted == 0 then return 0 end
   local index = math.ceil(#sorted * p / 100)
   if index < 1 then index = 1 end
   return sorted[index]
end

-- extra: names of per-thread counters to add up (e.g. {"cycles", "conflicts"}),
-- samples: name of a per-thread table of latencies (us) to report percentiles of.
function report(summary, latency, counters, samples)
   local e = summary.errors
   local fields = {
      string.format('"requests":%d', summary.requests),
      string.format('"duration_us":%d', summary.duration),
      string.format('"bytes":%d', summary.bytes),
      string.format('"connect_errors":%d', e.connect),
      string.format('"read_errors":%d', e.read),
      string.format('"write_errors":%d', e.write),
      string.format('"status_errors":%d', e.status),
      string.format('"timeouts":%d', e.timeout),
      string.format('"p50_us":%d', latency:percentile(50)),
      string.format('"p99_us":%d', latency:percentile(99)),
      string.format('"mean_us":%.1f', latency.mean),
      string.format('"max_us":%d', latency.max),
      string.format('"threads":%d', #threads),
   }
   for _, name in ipairs(counters or {}) do
      table.insert(fields, string.format('"%s":%d', name, sum_of(name)))
   end
   if samples then
      local all = {}
      for _, thread in ipairs(threads) do
         for _, value in ipairs(thread:get(samples) or {}) do
            table.insert(all, value)
         end
      end
      table.sort(all)
      table.insert(fields, string.format('"%s_count":%d', samples, #all))
      table.insert(fields, string.format('"%s_p50_us":%d', samples, percentile(all, 50)))
      table.insert(fields, string.format('"%s_p99_us":%d', samples, percentile(all, 99)))
   end
   io.write("BENCHJSON {" .. table.concat(fields, ",") .. "}\n")
end
