-- Shapes REST traffic at the edge; placed before the gRPC-JSON transcoder.
-- Requests (REST only): headers that gRPC would read itself (grpc-*, *-bin) or whose names gRPC
-- metadata cannot carry are dropped, and a path that is not UTF-8 once percent-decoded gets a 400
-- here, so none of them can make the service's gRPC core refuse the call with a 500.
-- Responses run after the transcoder's:
-- * Service errors: the service puts the rendered Bifrost error JSON in the `x-bf-error-body`
--   response header and the HTTP status it wants in `x-bf-status`; this swaps them in as body and
--   status, so a provider's 409 stays a 409 (the gRPC code alone would say 400).
-- * Transcoded JSON answers lose the gRPC-internal headers. Native gRPC responses are untouched.
-- * CancelMany streams (the service sends `x-bf-stream: ndjson`): each line is passed on as it comes
--   (no buffering), typed `application/x-ndjson`; in an item's `error` the transcoder omits unset
--   optional fields, so `code` and `param` are put back as null, as in the single cancel's body.
local function is_grpc(ctype)
  return ctype ~= nil and string.sub(ctype, 1, 16) == "application/grpc"
end

-- UTF-8 as protobuf strings require it (no overlongs, surrogates or code points past U+10FFFF).
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else
      return false
    end
    for j = i + 1, i + len - 1 do
      local cc = string.byte(s, j)
      if cc == nil or cc < 0x80 or cc > 0xBF or (j == i + 1 and (cc < lo or cc > hi)) then return false end
    end
    i = i + len
  end
  return true
end

local BAD_PATH = '{"is_bifrost_error":true,"status_code":400,"error":{"type":"invalid_request_error",' ..
  '"code":"invalid_request","message":"the URL is not valid UTF-8 once percent-decoded","param":null},' ..
  '"extra_fields":{"provider":"","request_type":"batch_cancel"}}'

function envoy_on_request(handle)
  local headers = handle:headers()
  if is_grpc(headers:get("content-type")) then
    return
  end
  local drop = {}
  for key, _ in pairs(headers) do
    if string.sub(key, 1, 1) ~= ":" and (string.sub(key, 1, 5) == "grpc-" or string.sub(key, -4) == "-bin"
        or string.find(key, "[^%w%-_%.]")) then
      drop[#drop + 1] = key
    end
  end
  for _, key in ipairs(drop) do
    headers:remove(key)
  end
  local path = headers:get(":path")
  if path ~= nil and string.find(path, "%%[89A-Fa-f]%x") then
    local decoded = string.gsub(path, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    if not valid_utf8(decoded) then
      handle:respond({[":status"] = "400", ["content-type"] = "application/json"}, BAD_PATH)
    end
  end
end

-- One NDJSON line of a CancelMany stream. Keys print in proto field order and every quote inside
-- a JSON string is escaped, so `,"message":` and `},"extra_fields":{` found after the inner
-- error's `"type":` are that object's own keys and its end.
local ITEM_ERROR = '"error":{"is_bifrost_error":'
local function null_missing_error_fields(line)
  local _, item = string.find(line, ITEM_ERROR, 1, true)
  if item == nil then return line end
  local _, inner = string.find(line, '"error":{"type":', item, true)
  if inner == nil then return line end
  local close = string.find(line, '},"extra_fields":{', inner, true)
  if close == nil then return line end
  local fields = string.sub(line, inner + 1, close - 1)
  if string.find(fields, ',"code":', 1, true) == nil then
    local message = string.find(fields, ',"message":', 1, true)
    if message ~= nil then
      fields = string.sub(fields, 1, message - 1) .. ',"code":null' .. string.sub(fields, message)
    end
  end
  if string.find(fields, ',"param":', 1, true) == nil then
    fields = fields .. ',"param":null'
  end
  return string.sub(line, 1, inner) .. fields .. string.sub(line, close)
end

local function shape_stream(handle)
  for chunk in handle:bodyChunks() do
    local size = chunk:length()
    if size > 0 then
      local text = chunk:getBytes(0, size)
      if string.find(text, ITEM_ERROR, 1, true) ~= nil then
        local lines = {}
        for line in string.gmatch(text, "[^\n]*\n?") do
          if line ~= "" then lines[#lines + 1] = null_missing_error_fields(line) end
        end
        chunk:setBytes(table.concat(lines))
      end
    end
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local ctype = headers:get("content-type")
  if ctype == nil or is_grpc(ctype) then
    return
  end
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")
  headers:remove("grpc-status-details-bin")
  if headers:get("x-bf-stream") ~= nil then
    headers:remove("x-bf-stream")
    headers:replace("content-type", "application/x-ndjson")
    shape_stream(handle)
    return
  end
  local body = headers:get("x-bf-error-body")
  if body == nil then
    return
  end
  local status = headers:get("x-bf-status")
  headers:remove("x-bf-error-body")
  headers:remove("x-bf-status")
  if status ~= nil then
    headers:replace(":status", status)
  end
  headers:replace("content-type", "application/json")
  headers:replace("content-length", tostring(#body))
  handle:body(true):setBytes(body)
end
