/* json/ may include util/ and itself, not runtime/ (above it): the rule must refuse the second include */
#include "../util/low.h"
#include "../runtime/host.h"
#include "same.h"
#include <stdio.h>
#include "generated_elsewhere.h"
