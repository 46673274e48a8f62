---@meta wix

-- LuaLS (lua-language-server) definitions for the `wix` module (lua/wix.lua and
-- its C half src/wix/wix_core.c). Declarations only: nothing here runs.
--
-- Every field is snake_case on the Lua side (the wire's lowerCamelCase is converted
-- in C). JSON nulls in answers arrive as `wix.null`, a light userdata that is truthy.
-- Calls that talk to the API must run inside a script run by wixr (its scheduler):
-- they yield the calling coroutine until the answer is in. Failures raise a
-- `wix.Error` (catch it with `pcall`, test it with `wix.is_error`).

---The `wix` module: the Wix Resellers API (Packages and Product Instances) for wixr scripts.
local wix = {}

---------------------------------------------------------------------------
-- Enums
---------------------------------------------------------------------------

---The status of a product instance.
---@alias wix.Status
---| "PENDING"         # just created, not delivered yet
---| "ENABLED"         # delivered and active
---| "CANCELED"        # canceled
---| "FAILED"          # delivery failed (see `failure`)
---| "AWAITING_ACTION" # waits for the customer

---The type of a billing cycle.
---@alias wix.CycleType
---| "ONE_TIME"
---| "RECURRING"

---The unit of a recurring billing cycle's duration.
---@alias wix.Unit
---| "DAY"
---| "WEEK"
---| "MONTH"
---| "YEAR"

---A sortable field.
---@alias wix.SortField
---| "created_date"
---| "updated_date"

---A sort order.
---@alias wix.SortOrder
---| "ASC"
---| "DESC"

---A sort given as a string: a field name, ascending, or `-` and a field name, descending.
---@alias wix.SortString
---| "created_date"
---| "-created_date"
---| "updated_date"
---| "-updated_date"

---How calls reach the API.
---@alias wix.Transport
---| "http"    # the real API (or `wixr sandbox serve`) over HTTP
---| "sandbox" # the embedded emulator
---| "auto"

---An error code: the server's application error code, or one the module derives.
---@alias wix.ErrorCode
---| "INVALID_ARGUMENT"           # 400, or a validation error (also every client-side check)
---| "UNAUTHENTICATED"            # 401
---| "PERMISSION_DENIED"          # 403
---| "NOT_FOUND"                  # 404
---| "ALREADY_EXISTS"             # 409
---| "FAILED_PRECONDITION"        # 428
---| "RESOURCE_EXHAUSTED"         # 429
---| "INTERNAL"                   # 500
---| "UNIMPLEMENTED"              # 501
---| "UNAVAILABLE"                # 503
---| "DEADLINE_EXCEEDED"          # 504
---| "TRANSPORT"                  # no usable answer (connection failed, or the answer was not JSON)
---| "PRODUCT_INSTANCE_NOT_FOUND" # also raised by dry-run instance calls
---| string                       # any other application error code, or "HTTP_<status>"

---------------------------------------------------------------------------
-- Objects the API returns
---------------------------------------------------------------------------

---Why a FAILED instance failed.
---@class wix.Failure
---@field code string e.g. "DELIVERY_TIMEOUT", "EXTERNAL_FAILURE"
---@field message string

---The duration of a recurring billing cycle.
---@class wix.Interval
---@field unit wix.Unit
---@field count integer whole number >= 1

---A billing cycle in the wire form (as answers carry it in `billing_info`).
---@class wix.Cycle
---@field type wix.CycleType
---@field cycle_duration? wix.Interval present for RECURRING

---A product instance inside a package.
---@class wix.ProductInstance
---@field instance_id string GUID
---@field site_id? string GUID of the site it is assigned to; absent when floating
---@field catalog_product_id string GUID
---@field status wix.Status
---@field failure? wix.Failure present when FAILED
---@field billing_info? wix.Cycle
---@field country_code? string two letters, upper case
---@field expiration_date? string ISO 8601 date
---@field discount_code? string
---@field reference_product_instance_id? string GUID of the instance this one (a voucher) refers to
---@field created_date string ISO 8601 date
---@field updated_date string ISO 8601 date

---A package: the product instances bought together for one account.
---@class wix.Package
---@field id string GUID
---@field account_id string GUID of the account the package belongs to
---@field parent_account_id? string GUID of that account's reseller (absent on a dry-run create's simulated package)
---@field external_id? string your own id for the package (absent when none was set)
---@field product_instances wix.ProductInstance[]
---@field created_date string ISO 8601 date
---@field updated_date string ISO 8601 date
---@field dry_run? true set on what a mutating call returns in dry-run (simulated, nothing was sent)

---The cursors of a cursor-paged query answer.
---@class wix.Cursors
---@field next? string
---@field prev? string

---The `metadata` of a query answer (as the server sends it).
---@class wix.QueryMetadata
---@field count? integer packages on this page
---@field cursors? wix.Cursors cursor paging
---@field has_next? boolean cursor paging
---@field offset? integer offset paging
---@field total? integer offset paging
---@field too_many_to_count? boolean offset paging

---One page of packages, as `wix.packages.query` returns it.
---@class wix.QueryPage
---@field packages wix.Package[] always a list (empty when none match)
---@field metadata? wix.QueryMetadata
---@field next_cursor? string the cursor of the next page (`metadata.cursors.next`), nil on the last page

---------------------------------------------------------------------------
-- Arguments
---------------------------------------------------------------------------

---Options every call takes.
---@class wix.CallOptions
---@field account_id? string GUID of the account to act as (default: the spec's, then wix.settings.account_id, then the sandbox reseller)
---@field idempotency_key? string at most 100 characters (mutating calls; default: a fresh GUID, or in a hook run for an event with an id one derived from the event, the hook and the call's ordinal, the same on every run of that event)

---The billing short form: `{ unit = "YEAR", count = 1 }` (RECURRING unless `type` says otherwise).
---@class wix.BillingShort
---@field unit? wix.Unit
---@field count? integer whole number >= 1 (default 1)
---@field type? wix.CycleType
---@field cycle_duration? wix.Interval

---A billing cycle as create and adjust accept it: `"ONE_TIME"`, the short form, or the wire form.
---@alias wix.Billing "ONE_TIME"|wix.BillingShort|wix.Cycle

---One product to put in a new package.
---@class wix.ProductSpec
---@field catalog_product_id string GUID (required)
---@field site_id? string GUID of the site to assign it to
---@field country_code? string two letters (required with version 2, the default)
---@field billing? wix.Billing
---@field billing_info? wix.Billing same as `billing` (wins when both are given)
---@field discount_code? string at most 25 characters
---@field reference_product_instance_id? string GUID (vouchers)

---What `wix.packages.create` takes; no other keys are accepted.
---@class wix.CreateSpec
---@field products wix.ProductSpec[] 1 to 1000 products
---@field account_id? string GUID (`opts.account_id` wins over it)
---@field external_id? string at most 100 characters
---@field idempotency_key? string at most 100 characters (`opts.idempotency_key` wins over it)
---@field version? 1|2 the API version to create with (default 2)

---What `wix.instances.adjust` takes: `catalog_product_id` or a billing cycle, or both.
---@class wix.AdjustChange
---@field catalog_product_id? string GUID of the product to upgrade or downgrade to
---@field billing? wix.Billing
---@field billing_info? wix.Billing same as `billing` (wins when both are given)
---@field discount_code? string at most 25 characters

---A query filter: snake_case field names (dotted for nested ones) to values or operators,
---e.g. `{ external_id = "x" }`, `{ ["product_instances.status"] = { ["$hasSome"] = { "ENABLED" } } }`.
---@alias wix.Filter table<string, any>

---One sort item given as a table.
---@class wix.SortItem
---@field field_name wix.SortField
---@field order? wix.SortOrder default "ASC"

---A sort: one string, or a list of strings and `{ field_name, order }` items.
---@alias wix.Sort wix.SortString|(wix.SortString|wix.SortItem)[]

---What `wix.packages.query`, `each` and `all` take; no other keys are accepted by `query`.
---@class wix.Query
---@field filter? wix.Filter
---@field sort? wix.Sort
---@field limit? integer whole number >= 1; at most 100 with cursor paging
---@field cursor? string a page's `next_cursor` (it carries the filter and sort: give neither with it)
---@field offset? integer whole number >= 0: offset paging instead of cursors (not with each/all)
---@field account_id? string GUID of the account to query as (not a filter; `opts.account_id` wins over it)

---------------------------------------------------------------------------
-- Errors
---------------------------------------------------------------------------

---One bad field of a validation error.
---@class wix.FieldViolation
---@field field string e.g. "products[1].country_code" (client side) or "products[0].countryCode" (server)
---@field description string
---@field violated_rule? string
---@field rule_name? string
---@field data? table

---The error every failure of the module raises; `tostring(e)` gives a one-line summary.
---It is also the errors' metatable: `getmetatable(e) == wix.Error` (or use `wix.is_error`).
---@class wix.Error
---@field status integer HTTP status (400 for client-side checks, 0 when nothing answered)
---@field code wix.ErrorCode
---@field message string
---@field field? string the bad field (client-side checks)
---@field field_violations? wix.FieldViolation[] every bad field (validation errors)
---@field retryable boolean true for TRANSPORT, 408, 429 and 5xx; false is permanent (wixr serve does not retry it)
---@field permanent? true made by `wix.permanent`
---@field request_id? string the answer's x-wix-request-id
---@field method? string the HTTP method of the call
---@field path? string the path of the call
---@field attempts? integer how many times the call was sent (retries included)
---@field client_side? true the call was not sent (it failed a client-side check)
---@field where? string "file:line" of the script line that made the call
---@field details? table the answer's raw `details` (API errors)
---@field dry_run? true raised by a dry-run stand-in
wix.Error = {}

---True when v is an error raised by the wix module.
---@param v any
---@return boolean
function wix.is_error(v) end

---Raises `fields` as a wix.Error (it gets the metatable, and `where` when missing); never returns.
---@param fields table the error's fields (see wix.Error)
function wix.raise(fields) end

---A policy's own refusal, to raise with `error(...)`: a wix.Error with `retryable = false`,
---so wixr serve ends the event at once as `dead` with the reason instead of retrying it
---(a plain `error("...")` is retried). `code` defaults to "PERMANENT".
---@param reason string why the event cannot succeed
---@param fields? table more fields of the error (e.g. `{ code = "UNKNOWN_PLAN" }`)
---@return wix.Error
function wix.permanent(reason, fields) end

---------------------------------------------------------------------------
-- Constants and settings
---------------------------------------------------------------------------

---The JSON null: what a null in an answer decodes to, and what to send for one.
---@type lightuserdata
wix.null = nil

---The module's version.
wix.VERSION = "0.1.0"

---The set of instance statuses: each is a key whose value is `true`.
---@type { PENDING: true, ENABLED: true, CANCELED: true, FAILED: true, AWAITING_ACTION: true }
wix.STATUS = {}

---How this process calls the API.
---@class wix.Settings
---@field transport wix.Transport
---@field account_id? string GUID of the default account (config `wix.account_id` or WIX_ACCOUNT_ID)
---@field dry_run boolean mutating calls are recorded, not sent

---The settings this process runs with (read once when the module loads).
---@type wix.Settings
wix.settings = {}

---Counts of this process's API calls.
---@class wix.Stats
---@field calls integer calls made
---@field attempts integer requests sent (retries included)
---@field retries integer
---@field rate_waits integer times a call waited for the rate limit

---------------------------------------------------------------------------
-- Packages
---------------------------------------------------------------------------

---Packages: create, read, query and cancel them.
wix.packages = {}

---Creates a package (in dry-run: records the call and returns a simulated package).
---@param spec wix.CreateSpec
---@param opts? wix.CallOptions
---@return wix.Package
function wix.packages.create(spec, opts) end

---Gets one package by id.
---@param id string GUID
---@param opts? wix.CallOptions
---@return wix.Package
function wix.packages.get(id, opts) end

---One page of packages.
---@param q? wix.Query
---@param opts? wix.CallOptions
---@return wix.QueryPage
function wix.packages.query(q, opts) end

---Iterates over every package matching q, following cursors page by page: `for pkg in wix.packages.each{...} do`.
---@param q? wix.Query without `offset`
---@param opts? wix.CallOptions
---@return fun(): wix.Package?
function wix.packages.each(q, opts) end

---Every package matching q, as a list (follows every page).
---@param q? wix.Query without `offset`
---@param opts? wix.CallOptions
---@return wix.Package[]
function wix.packages.all(q, opts) end

---Cancels a package (every instance in it); returns the package.
---@param id string GUID
---@param opts? wix.CallOptions
---@return wix.Package
function wix.packages.cancel(id, opts) end

---Sets a package's external id; returns the updated package (this call takes no idempotency key).
---@param id string GUID
---@param external_id string 1 to 100 characters
---@param opts? wix.CallOptions only `account_id` is used
---@return wix.Package
function wix.packages.set_external_id(id, external_id, opts) end

---Finds the package that holds an instance (a read), or nil.
---@param instance_id string GUID
---@param opts? wix.CallOptions
---@return wix.Package?
function wix.packages.find_by_instance(instance_id, opts) end

---Finds the packages with this external id (follows every page).
---@param external_id string at most 100 characters
---@param opts? wix.CallOptions
---@return wix.Package[]
function wix.packages.find_by_external_id(external_id, opts) end

---------------------------------------------------------------------------
-- Product instances
---------------------------------------------------------------------------

---Product instances: change, move and cancel them; each call returns the package that holds the instance.
wix.instances = {}

---Upgrades, downgrades or changes the billing cycle of an instance (it keeps its id).
---@param instance_id string GUID
---@param change wix.AdjustChange
---@param opts? wix.CallOptions
---@return wix.Package
function wix.instances.adjust(instance_id, change, opts) end

---Assigns an instance to a site (also moves it from another site).
---@param instance_id string GUID
---@param site_id string GUID
---@param opts? wix.CallOptions
---@return wix.Package
function wix.instances.assign(instance_id, site_id, opts) end

---Unassigns an instance from its site (it becomes floating).
---@param instance_id string GUID
---@param opts? wix.CallOptions
---@return wix.Package
function wix.instances.unassign(instance_id, opts) end

---Cancels one instance; returns the package that holds it.
---@param instance_id string GUID
---@param opts? wix.CallOptions
---@return wix.Package
function wix.instances.cancel(instance_id, opts) end

---The instance with this id inside a package, or nil (the id is compared as given).
---@param pkg? wix.Package
---@param instance_id string GUID
---@return wix.ProductInstance?
function wix.instance_of(pkg, instance_id) end

---------------------------------------------------------------------------
-- Concurrency
---------------------------------------------------------------------------

---Runs the functions at once and returns their (first) results in order; if any failed,
---raises the first one's error (by position) after all have finished.
---@param fns (fun(): any)[]
---@return any[]
function wix.all(fns) end

---A function started by `wix.spawn`.
---@class wix.Task
---@field done boolean true once the function has returned or raised
---@field private ok? boolean
---@field private value any
---@field private waiter? integer
local Task = {}

---Waits for the task and returns its (first) result; raises its error if it failed.
---@return any
function Task:wait() end

---Starts fn(...) alongside the caller; returns a task with :wait().
---@param fn fun(...): any
---@param ... any arguments for fn
---@return wix.Task
function wix.spawn(fn, ...) end

---Waits ms milliseconds without blocking other runs.
---@param ms number milliseconds (0 or less: just lets others run)
function wix.sleep(ms) end

---A fresh random (v4) GUID, lower case.
---@return string
function wix.uuid() end

---Marks a table to be sent as a JSON array even when empty (sets its metatable; returns it).
---@generic T: table
---@param t? T default: a new empty table
---@return T
function wix.array(t) end

---Counts of this process's calls: { calls, attempts, retries, rate_waits }.
---@return wix.Stats
function wix.stats() end

return wix
