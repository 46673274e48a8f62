/* a util/ header */
