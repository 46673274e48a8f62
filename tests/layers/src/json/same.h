/* a json/ header */
