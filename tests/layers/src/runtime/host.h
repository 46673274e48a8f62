/* a runtime/ header: runtime/ may include json/ and util/ */
#include "json/same.h"
#include "../util/low.h"
